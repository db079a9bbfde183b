"""Issue 9 §6: hostile values (deep nesting, huge integers, NaN) give typed errors or exact results, never
a RecursionError, a raw ValueError or invalid JSON."""

from __future__ import annotations

import dataclasses
import decimal
import json
import math

import pytest
from conftest import cli

from gflow.errors import InvalidArguments, SerializationError
from gflow.objects import Score
from gflow.serialization import MAX_DEPTH, TAG, decode, encode, from_jsonable, to_display, to_json_text


@dataclasses.dataclass
class Pt:
    name: str
    value: float


def nested(depth: int, leaf=0, kind=list):
    v = leaf
    for _ in range(depth):
        v = kind([v]) if kind is not dict else {"k": v}
    return v


def roundtrip(v, **kw):
    e = encode(v, **kw)
    return decode(e.data, e.blobs.__getitem__)


# -- depth ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_deep_values_are_refused_with_a_serialization_error_naming_the_argument(kind):
    deep = nested(1000, kind=kind)
    with pytest.raises(SerializationError, match=rf"argument 'x'.*more than {MAX_DEPTH} levels"):
        encode(deep, where="argument 'x'")


def test_deep_error_names_the_argument_of_a_parameter_dict():
    with pytest.raises(SerializationError, match=r"^flow 'f' parameters: 'x': nested more than 100 levels"):
        encode({"n": 1, "x": nested(500)}, where="flow 'f' parameters")


def test_deep_values_as_dict_keys_and_set_elements_are_refused():
    with pytest.raises(SerializationError, match="levels"):
        encode({nested(1000, kind=tuple): 1}, where="argument 'k'")
    with pytest.raises(SerializationError, match="levels"):
        encode(frozenset([nested(1000, kind=tuple)]))


def test_values_up_to_the_limit_round_trip_inside_gflow_envelopes():
    v = nested(MAX_DEPTH, leaf="x")
    assert roundtrip(v) == v
    wrapped = {"args": [v], "kwargs": {"y": nested(MAX_DEPTH, kind=dict)}}  # a call spec's inputs
    assert roundtrip(wrapped) == wrapped


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 5000 + "1" + "}" * 5000,
    json.dumps(nested(300, kind=dict)),
    json.dumps({TAG: "tuple", "items": [nested(300)]}),
    json.dumps({TAG: "model", "type": "gflow.objects.score:Score", "data": nested(300, kind=dict)}),
])
def test_deep_stored_json_is_refused_on_decode(text):
    with pytest.raises(SerializationError, match="deep"):
        decode(text, where="result of task 't'")


def test_deep_pydantic_model_data_is_refused_on_encode():
    from pydantic import BaseModel

    class Holder(BaseModel):
        data: object

    with pytest.raises(SerializationError, match="depth|levels"):
        encode(Holder(data=nested(500)))
    with pytest.raises(SerializationError, match="levels"):
        encode(Holder(data=nested(MAX_DEPTH + 10)))


def test_display_of_deep_stored_values_is_bounded():
    shown = to_display(json.loads("[" * 500 + "]" * 500))
    depth = 0
    while isinstance(shown, list) and shown:
        shown, depth = shown[0], depth + 1
    assert shown == "<nested too deep>" and depth == MAX_DEPTH


# -- big integers ---------------------------------------------------------------------------------------
BIG = 7 * 10**5000


@pytest.mark.parametrize("value", [BIG, -BIG, {BIG: "k"}, {(1, BIG): 1}, {BIG, 1}, frozenset([-BIG]), [BIG, 2**14000],
                                   {"n": BIG}, Score(name="s", value=1.0)],
                         ids=["int", "neg", "key", "tuple-key", "set", "frozenset", "list", "value", "model"])
def test_integers_past_the_digit_limit_round_trip_exactly(value):
    assert roundtrip(value) == value


def test_big_int_encoding_is_canonical():
    assert encode({BIG: 1, 3: 2}).digest == encode({3: 2, BIG: 1}).digest
    assert encode({BIG, -BIG, 5}).digest == encode({5, -BIG, BIG}).digest
    assert encode(2**13999).data == b"%d" % 2**13999  # 14,000 bits or fewer: a plain JSON number
    assert b'"hex"' in encode(2**14000).data


def test_huge_integer_literal_in_stored_json_is_a_typed_error():
    with pytest.raises(SerializationError, match="not gflow's canonical JSON"):
        decode("1" * 5000)
    with pytest.raises(SerializationError):
        decode(json.dumps({TAG: "int", "hex": "12"}))


# -- malformed tagged values ----------------------------------------------------------------------------
@pytest.mark.parametrize("tree", [
    {TAG: "tuple"}, {TAG: "tuple", "items": 3}, {TAG: "dict", "items": [[1]]}, {TAG: "dict", "items": [[[{}], 1]]},
    {TAG: "set", "items": [{}]}, {TAG: "float", "v": "1.5"}, {TAG: "float", "v": ["nan"]}, {TAG: "bytes", "b64": "%%"},
    {TAG: "path", "v": 3}, {TAG: "datetime", "v": "yesterday"}, {TAG: "date", "v": None}, {TAG: "nope"},
    {TAG: ["model"]}, {TAG: "enum", "type": "gflow.states:State", "v": "NOT_A_STATE"},
    {TAG: "model", "type": "gflow.objects.score:Score", "data": {"value": "high"}},
    {TAG: "dataclass", "type": "gflow.executors.base:Call", "data": []},
    {TAG: "ndarray", "dtype": "O", "shape": [1], "blob": "sha256:" + "0" * 64},
    {TAG: "ndarray", "dtype": "<f8", "shape": [-1], "blob": "sha256:" + "0" * 64},
    {TAG: "ndarray", "dtype": "not a dtype", "shape": [1], "blob": "sha256:" + "0" * 64},
    {TAG: "pickle"}, {TAG: "enum", "type": None, "v": 1}, {TAG: "model", "type": "a:b:c", "data": {}},
])
def test_malformed_stored_values_raise_serialization_errors(tree):
    pytest.importorskip("numpy")
    with pytest.raises(SerializationError, match="^result of task 't'"):
        from_jsonable(tree, lambda d: b"\0" * 8, allow_pickle=True, signing_key="k" * 32, where="result of task 't'")


def test_array_blob_of_the_wrong_size_is_refused():
    np = pytest.importorskip("numpy")
    e = encode(np.arange(4.0))
    (d,) = e.blobs
    with pytest.raises(SerializationError, match="bytes"):
        decode(e.data, {d: b"\0" * 8}.__getitem__)


# -- NaN and friends in printed results ---------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    (float("nan"), "NaN"), (float("inf"), "Infinity"), ([1.5, -math.inf], [1.5, "-Infinity"]),
    ({"score": math.nan}, {"score": "NaN"}), (Pt("s", math.nan), {"name": "s", "value": "NaN"}),
])
def test_to_json_text_is_strict_json(value, expected):
    text = to_json_text(value)
    got = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    if isinstance(expected, dict):
        assert {k: got[k] for k in expected} == expected
    else:
        assert got == expected


def test_to_json_text_of_big_ints_deep_values_and_odd_objects():
    exact = json.loads(to_json_text({"n": BIG}), parse_int=lambda s: int(decimal.Decimal(s)))
    assert exact["n"] == BIG  # an exact JSON number
    deep = json.loads(to_json_text(nested(5000)))
    assert isinstance(deep, list)
    assert json.loads(to_json_text(b"\xff\x00")) == repr(b"\xff\x00")

    class Odd:
        def __repr__(self):
            raise RuntimeError("no repr")

    assert json.loads(to_json_text([Odd()])) == ["<Odd>"]


# -- --param ---------------------------------------------------------------------------------------------
def test_param_big_int_is_an_int_not_a_string():
    from gflow._params import parse_params

    digits = "7" * 5000
    assert parse_params((f"n={digits}",)) == {"n": int("7" * 4000) * 10**1000 + int("7" * 1000)}
    assert parse_params((f"xs=[{digits}, 1]",))["xs"][0] % 10**6 == 777777


@pytest.mark.parametrize("item, message", [
    ("x=" + "[" * 5000 + "]" * 5000, "nested more than 100 levels"),
    ("x=" + "[" * 101 + "]" * 101, "nested more than 100 levels"),
    ("x=" + '{"a":' * 200 + "1" + "}" * 200, "nested more than 100 levels"),
    ("x=[1, 2", "looks like JSON but is not valid JSON"),
    ("n=" + "9" * 200_000, "200,000 digits"),
    ("=3", "expected KEY=VALUE"),
    ("novalue", "expected KEY=VALUE"),
])
def test_param_errors_are_one_line(item, message):
    from gflow._params import parse_params

    with pytest.raises(InvalidArguments, match=message) as info:
        parse_params((item,))
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_param_values_that_stay_strings_and_duplicates():
    from gflow._params import parse_params

    assert parse_params(("s=MKTAYIAK", "p=/data/x.pdb", 'q="[not json"', "smi=C1CC1", "e=")) == {
        "s": "MKTAYIAK", "p": "/data/x.pdb", "q": "[not json", "smi": "C1CC1", "e": ""}
    assert parse_params(("x=[[1]]",)) == {"x": [[1]]}
    with pytest.raises(InvalidArguments, match="given twice"):
        parse_params(("a=1", "a=2"))


@pytest.mark.slow
def test_cli_param_errors_print_one_line_and_big_ints_run(tmp_path):
    (tmp_path / "pflow.py").write_text(
        "import gflow\n\n@gflow.task\ndef mod(n: int) -> int:\n    return n % 1000\n\n"
        "@gflow.flow\ndef f(n: int) -> int:\n    return mod(n).result()\n\n"
        "@gflow.flow\ndef g(x: list) -> int:\n    return len(x)\n")
    res = cli("run", "pflow.py:g", "-p", "x=" + "[" * 3000 + "]" * 3000, "--no-progress", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "RecursionError" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == ["error: --param x: nested more than 100 levels "
                                                                    "deep"]
    res = cli("run", "pflow.py:f", "-p", "n=" + "7" * 5000, "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == 777


@pytest.mark.slow
def test_cli_prints_a_nan_result_as_valid_json(tmp_path):
    (tmp_path / "nanflow.py").write_text(
        "import gflow\n\n@gflow.flow\ndef f() -> dict:\n    return {'score': float('nan'), 'n': 7 * 10**5000}\n")
    res = cli("run", "nanflow.py:f", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"),
                     parse_int=lambda s: int(decimal.Decimal(s)))
    assert got == {"score": "NaN", "n": 7 * 10**5000}
