"""Issue 9 §7: a bounded hypothesis fuzz suite for what reads untrusted or hostile values.

- the canonical serializer: round trips, and key stability (equal values give equal bytes,
  whatever the dict/set insertion order);
- decoding arbitrary JSON trees and text, including gflow tags naming dangerous callables;
- ``gflow worker`` on hostile call specs and the driver on hostile outcome records;
- the ``--param`` parser.

Only typed gflow errors are allowed, and nothing may run: every hostile path in these trees would
leave a marker file behind if it were called. Bounded for CI: ``GFLOW_FUZZ_EXAMPLES`` (default 150)
examples per property, no deadline (a shared 2-core CI machine has noisy timings), no example
database; the file runs in well under a minute. Raise the variable to fuzz longer locally.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import pathlib
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gflow._params import parse_param, parse_params
from gflow.artifacts import LocalArtifactStore, digest_of
from gflow.errors import GflowError, InvalidArguments
from gflow.executors.base import Outcome
from gflow.images.protocol import ARRAY, CALL, OUTCOME, outcome_slot, read_outcome, to_outcome
from gflow.images.worker import run_spec
from gflow.objects import Protein, Score
from gflow.serialization import TAG, decode, encode, from_jsonable, to_json_text

pytestmark = pytest.mark.slow
KEY = "fuzz-signing-key-" + "x" * 32
FUZZ = settings(max_examples=int(os.environ.get("GFLOW_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
# a folder the hostile payloads would write into if anything ran them (checked after every example)
MARKERS = pathlib.Path(tempfile.mkdtemp(prefix="gflow-fuzz-markers-"))


@pytest.fixture(autouse=True, scope="module")
def printable_big_ints():
    """Hypothesis prints examples with repr(), which Python refuses for ints over 4,300 digits: lift the
    limit while this module runs (gflow's canonical form does not depend on it: ints over 14,000 bits are
    stored as hex)."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(old)


def nothing_ran() -> None:
    left = list(MARKERS.iterdir())
    assert not left, f"a hostile payload ran: {left}"


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    label: str = ""


# -- values gflow can encode ------------------------------------------------------------------------------
BIG_INTS = st.one_of(st.integers(13_990, 20_000).map(lambda b: 2**b - 1),
                     st.integers(4290, 5100).map(lambda n: -(10**n)))
ints = st.one_of(st.integers(), BIG_INTS)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=20), st.binary(max_size=20),
                    st.sampled_from(list(Color) + list(Level)), st.dates(),
                    st.datetimes(timezones=st.sampled_from([None, dt.UTC])),
                    st.builds(pathlib.PurePosixPath, st.text("abc/", max_size=10)).map(lambda p: pathlib.Path(p)),
                    st.builds(Point, st.integers(), st.text(max_size=5)),
                    st.builds(Score, name=st.text(min_size=1, max_size=5),
                              value=st.floats(allow_nan=False, allow_infinity=False)),
                    st.builds(Protein, sequence=st.text("ACDEFGHIKLMNPQRSTVWY", min_size=1, max_size=12)))
hashables = st.recursive(st.one_of(st.none(), st.booleans(), ints, st.text(max_size=8), st.dates()),
                         lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
                         max_leaves=6)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4), st.frozensets(hashables, max_size=4)),
    max_leaves=20)


def roundtrip(v):
    e = encode(v)
    return decode(e.data, e.blobs.__getitem__)


@FUZZ
@given(values)
def test_canonical_round_trip(v):
    e = encode(v)
    back = decode(e.data, e.blobs.__getitem__)
    assert encode(back).data == e.data  # NaN-safe equality: the same canonical bytes
    assert type(back) is type(v)
    if b'"v":"nan"' not in e.data:  # NaN != NaN; the bytes above already compare it
        assert back == v


@FUZZ
@given(st.lists(st.tuples(hashables, values), max_size=6), st.randoms(use_true_random=False))
def test_key_stability_whatever_the_insertion_order(items, rnd):
    d1 = dict(items)
    shuffled = list(d1.items())
    rnd.shuffle(shuffled)
    d2 = dict(shuffled)
    assert encode(d1).data == encode(d2).data
    keys = list(d1)
    rnd.shuffle(keys)
    assert encode(set(d1)).data == encode(set(keys)).data
    str_items = {f"k{i}": v for i, (_, v) in enumerate(items)}
    assert encode(str_items).data == encode(dict(reversed(list(str_items.items())))).data


# -- hostile stored trees -----------------------------------------------------------------------------------
def _payload(kind: str) -> str:
    return f"touch {MARKERS / kind}"


DANGEROUS = ["os:system", "subprocess:Popen", "subprocess:run", "builtins:eval", "builtins:exec", "os:popen",
             "builtins:__import__", "os:path.os.system", "gflow.serialization:import_path", "pickle:loads",
             "antigravity:geohash", "this:s", "pip.__main__:main", f"{__name__}:nothing_ran",
             "gflow.images.worker:run_spec", "shutil:rmtree", "importlib:import_module"]
SAFE = [f"{__name__}:Color", f"{__name__}:Level", f"{__name__}:Point", "gflow.objects.score:Score",
        "gflow.objects.protein:Protein", "gflow.states:State"]
TAGS = ["model", "tuple", "dict", "set", "frozenset", "float", "int", "enum", "bytes", "path", "datetime", "date",
        "dataclass", "ndarray", "tensor", "pickle", "bogus"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(max_size=12), st.sampled_from([_payload("leaf"), "nan", "0x1f", "sha256:" + "0" * 64]))


def _tagged(inner):
    return st.fixed_dictionaries(
        {TAG: st.sampled_from(TAGS)},
        optional={"type": st.sampled_from(DANGEROUS + SAFE), "v": st.one_of(inner, st.just(_payload("v"))),
                  "data": st.one_of(inner, st.fixed_dictionaries({"x": st.integers()})), "items": inner,
                  "b64": st.text(max_size=8), "hex": st.text("-0x1f", max_size=6),
                  "blob": st.sampled_from(["sha256:" + "0" * 64, "../../etc/passwd", "sha256:zz"]),
                  "sig": st.text(max_size=10), "dtype": st.sampled_from(["<f8", "O", "float32", "torch.load"]),
                  "shape": st.lists(st.integers(-2, 3), max_size=3)})


json_trees = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4), _tagged(inner)),
    max_leaves=25)


def _blob(digest: str) -> bytes:
    return b"\x00" * 8


@FUZZ
@given(json_trees, st.booleans())
def test_decoding_arbitrary_trees_gives_values_or_typed_errors(tree, allow_pickle):
    try:
        value = from_jsonable(tree, _blob, allow_pickle=allow_pickle, signing_key=KEY, where="fuzzed")
        event(f"decoded a {type(value).__name__}")
    except GflowError as e:
        event(f"refused: {type(e).__name__}")
    nothing_ran()


def _nodes(tree, path=()):
    yield path
    if type(tree) is list:
        for i, v in enumerate(tree):
            yield from _nodes(v, (*path, i))
    elif type(tree) is dict:
        for k, v in tree.items():
            yield from _nodes(v, (*path, k))


@FUZZ
@given(values, st.data())
def test_decoding_canonical_trees_with_one_hostile_part(v, data):
    e = encode(v)
    tree = json.loads(e.data)
    paths = list(_nodes(tree))
    path = data.draw(st.sampled_from(paths))
    hostile = data.draw(st.one_of(json_leaf, _tagged(json_leaf), st.sampled_from(DANGEROUS + SAFE)))
    if path:
        parent = tree
        for p in path[:-1]:
            parent = parent[p]
        parent[path[-1]] = hostile
    else:
        tree = hostile
    try:
        from_jsonable(tree, e.blobs.__getitem__, where="fuzzed")
        event("decoded")
    except GflowError as err:
        event(f"refused: {type(err).__name__}")
    nothing_ran()


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_trees.map(json.dumps)))
def test_decoding_arbitrary_text_gives_values_or_typed_errors(text):
    try:
        decode(text, _blob, where="fuzzed")
    except GflowError:
        pass
    nothing_ran()


# -- the worker and the driver on hostile specs and outcome records --------------------------------------------
@pytest.fixture(scope="module")
def arts():
    d = tempfile.mkdtemp(prefix="gflow-fuzz-arts-")
    return LocalArtifactStore(d)


digests = st.one_of(st.sampled_from(["sha256:" + "0" * 64, "sha256:../../x", "", "sha256:" + "A" * 64]),
                    st.text(max_size=10))
tasks = st.one_of(st.sampled_from(["flows_basic:add", "flows_basic:boom"]), st.just("flows_basic:add"),
                  st.sampled_from(DANGEROUS + ["flows_basic:bump", "flows_basic:Protein"]), st.text(max_size=20))
wellformed_specs = st.fixed_dictionaries({
    "kind": st.just(CALL), "task": tasks, "version": st.sampled_from(["CURRENT"] * 4 + ["0000"]),
    "inputs": st.just("INPUTS"), "pickle": st.booleans(), "bundle": st.none(), "name": st.text(max_size=10)})
loose_specs = st.fixed_dictionaries({"kind": st.sampled_from([CALL, ARRAY, "gflow.call/v0", None])}, optional={
    "task": tasks, "version": st.one_of(st.text(max_size=8), st.integers()),
    "inputs": st.one_of(digests, st.just("INPUTS")), "pickle": st.one_of(st.booleans(), st.none(), st.integers()),
    "bundle": st.one_of(st.none(), digests), "calls": st.one_of(st.lists(digests, max_size=3), st.text(max_size=5)),
    "name": st.text(max_size=10)})
specs = st.one_of(wellformed_specs, loose_specs)
input_trees = st.one_of(
    json_trees.map(lambda t: {"args": [t], "kwargs": {}}),
    st.tuples(json_trees, json_trees).map(lambda ab: {"args": list(ab), "kwargs": {}}),
    json_trees)


@FUZZ
@given(specs, input_trees, st.one_of(st.none(), st.integers(-2, 3)))
def test_worker_on_hostile_call_specs_writes_an_outcome_and_runs_nothing(arts, spec, inputs, index):
    import flows_basic

    if spec.get("version") == "CURRENT" and spec.get("task") in ("flows_basic:add", "flows_basic:boom"):
        spec["version"] = getattr(flows_basic, spec["task"].partition(":")[2]).version  # get as far as the inputs
    if spec.get("inputs") == "INPUTS":
        spec["inputs"] = arts.put(json.dumps(inputs).encode())
    digest = arts.put(json.dumps(spec).encode())
    code = run_spec(arts, digest, index)
    assert code in (0, 1, 2)
    rec = read_outcome(arts, digest)
    if spec.get("kind") != ARRAY:
        assert rec is not None and rec["ok"] is (code == 0)
        event(f"exit {code} at stage {rec.get('stage')}")
        assert isinstance(to_outcome(arts, rec), Outcome)
    nothing_ran()


@FUZZ
@given(st.binary(max_size=300))
def test_worker_on_spec_bytes_that_are_not_json(arts, raw):
    digest = arts.put(raw)
    assert run_spec(arts, digest) == 2
    nothing_ran()


records = st.fixed_dictionaries({"kind": st.sampled_from([OUTCOME, "x", None])}, optional={
    "ok": st.one_of(st.booleans(), st.integers(), st.none()),
    "result": st.one_of(digests, st.just("RESULT")),
    "started": st.one_of(st.floats(), st.text(max_size=4), st.none()),
    "ended": st.one_of(st.floats(), st.integers(), st.none()),
    "error_type": st.one_of(st.text(max_size=10), st.integers()),
    "error_message": st.one_of(st.text(max_size=20), st.lists(st.integers())),
    "traceback": st.one_of(st.text(max_size=10), st.none())})


@FUZZ
@given(st.one_of(records.map(lambda r: json.dumps(r).encode()), st.binary(max_size=100)), json_trees,
       st.booleans())
def test_driver_on_hostile_outcome_records(arts, raw, result_tree, allow_pickle):
    spec = digest_of(raw + b"spec")
    result = arts.put(json.dumps(result_tree).encode())
    raw = raw.replace(b'"RESULT"', json.dumps(result).encode())
    arts.put_slot(outcome_slot(spec), raw)
    rec = read_outcome(arts, spec)
    assert isinstance(rec, dict)
    out = to_outcome(arts, rec, allow_pickle=allow_pickle)
    assert isinstance(out, Outcome) and isinstance(out.error_message or "", str)
    assert out.started is None or math.isfinite(out.started)
    nothing_ran()


# -- the --param parser ----------------------------------------------------------------------------------------
@FUZZ
@given(st.lists(st.text(max_size=40), max_size=4))
def test_param_parser_returns_values_or_one_line_errors(items):
    try:
        out = parse_params(tuple(items))
    except InvalidArguments as e:
        assert "\n" not in str(e) and len(str(e)) < 400
    else:
        assert len(out) == len(items)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=10), BIG_INTS),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=15)


@FUZZ
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), json_values)
def test_param_json_values_parse_exactly(key, value):
    assert parse_param(f"{key}={to_json_text(value, indent=None)}") == (key, value)
