"""Paged array manifests (``gflow.array/v2``) and the worker's side of them, on a local artifact store:
how a fan-out is split into arrays, how a child finds its call(s) by its index, chunking, inline inputs."""

from __future__ import annotations

import json

import aws_tasks
import pytest

from gflow.artifacts import LocalArtifactStore
from gflow.executors._batch import outcome_of, split_sizes, write_paged_manifest
from gflow.executors.base import Call
from gflow.images import protocol
from gflow.images.worker import array_index, run_spec


def calls(task, args_list, run="r1"):
    return [Call(f"{run}.{i}", run, task, args, {}, 1, f"k{i}", i) for i, args in enumerate(args_list)]


@pytest.fixture
def arts(tmp_path):
    return LocalArtifactStore(tmp_path / "arts")


@pytest.mark.parametrize("n, most, sizes", [
    (10_000, 10_000, [10_000]), (10_001, 10_000, [5001, 5000]), (25, 10, [9, 8, 8]), (1, 10_000, [1]), (0, 5, []),
    (30_000, 10_000, [10_000] * 3),
])
def test_split_sizes_balance_arrays_and_never_leave_a_child_alone(n, most, sizes):
    got = split_sizes(n, most)
    assert got == sizes and sum(got) == n and all(1 < s <= most for s in got if n > 1)


def test_a_child_runs_the_calls_of_its_index_and_chunk(arts):
    cs = calls(aws_tasks.square, [(i,) for i in range(250)])
    m = write_paged_manifest(arts, cs, image="img:1", chunk=3, page_size=100)
    assert m.elements == 84 and list(m.calls_of(83)) == [249]
    array = json.loads(arts.get(m.array))
    assert array["kind"] == protocol.ARRAY_PAGED and array["size"] == 250 and len(array["pages"]) == 3
    # the specs are inline: their digests are what names each call's outcome slot
    page = json.loads(arts.get(array["pages"][1]))
    assert page["kind"] == protocol.PAGE and protocol.spec_digest(page["calls"][0]) == m.specs[100]
    assert not any(arts.exists(d) for d in m.specs[:3])  # no separate spec documents were stored
    # element 33 runs calls 99, 100, 101: across the first page boundary
    assert run_spec(arts, m.array, 33) == 0
    for j in (99, 100, 101):
        out = outcome_of(arts, m.specs[j])
        assert out.ok and out.value == j * j and out.result_ref
    assert outcome_of(arts, m.specs[102]) is None
    assert run_spec(arts, m.array, 83) == 0 and outcome_of(arts, m.specs[249]).value == 249 ** 2


def test_the_index_comes_from_batch_variables_or_the_child_job_id():
    assert array_index(None, {"AWS_BATCH_JOB_ARRAY_INDEX": "4", "AWS_BATCH_JOB_ID": "abc:9"}) == 4
    assert array_index(None, {"AWS_BATCH_JOB_ID": "0f2d6c1e-1a2b:9"}) == 9  # what moto sets
    assert array_index(None, {"AWS_BATCH_JOB_ID": "0f2d6c1e-1a2b"}) is None  # a plain job
    assert array_index(2, {"AWS_BATCH_JOB_ARRAY_INDEX": "4"}) == 2


def test_large_inputs_are_stored_beside_the_pages_and_small_ones_ride_inline(arts):
    big = "x" * 50_000
    cs = calls(aws_tasks.boom, [(big,), ("small",)])
    m = write_paged_manifest(arts, cs, chunk=1)
    page = json.loads(arts.get(json.loads(arts.get(m.array))["pages"][0]))
    big_inputs, small_inputs = page["calls"][0]["inputs"], page["calls"][1]["inputs"]
    assert big_inputs not in page["inputs"] and arts.exists(big_inputs)
    assert small_inputs in page["inputs"] and not arts.exists(small_inputs)
    assert run_spec(arts, m.array, 0) == 1  # the task raised: its outcome says so
    out = outcome_of(arts, m.specs[0])
    assert not out.ok and out.error_type == "ValueError" and out.error_message == big


def test_a_bad_index_or_a_tampered_page_is_a_worker_error_not_a_wrong_result(arts):
    cs = calls(aws_tasks.square, [(i,) for i in range(4)])
    m = write_paged_manifest(arts, cs)
    assert run_spec(arts, m.array, 4) == protocol.EXIT_WORKER_ERROR
    rec = protocol.read_outcome(arts, m.array)
    assert rec["stage"] == "spec" and "index 4 is outside the array spec" in rec["error_message"]
    assert run_spec(arts, m.array, None) == protocol.EXIT_WORKER_ERROR
    # an inline input that does not hash to its digest is refused
    array = json.loads(arts.get(m.array))
    page = json.loads(arts.get(array["pages"][0]))
    d = page["calls"][1]["inputs"]
    page["inputs"][d] = page["inputs"][d].replace("1", "7")
    forged_page = arts.put(protocol.canonical_json(page).encode())
    forged = arts.put(protocol.canonical_json({**array, "pages": [forged_page]}).encode())
    assert run_spec(arts, forged, 1) == protocol.EXIT_WORKER_ERROR
    assert "do not match their digest" in protocol.read_outcome(arts, forged)["error_message"]
    assert outcome_of(arts, m.specs[1]) is None


def test_call_specs_written_one_by_one_have_the_same_digest_as_inline_ones(arts):
    c = calls(aws_tasks.square, [(5,)])[0]
    spec, blobs = protocol.encode_call_spec(c, image="img:1")
    assert protocol.write_call_spec(arts, c, image="img:1") == protocol.spec_digest(spec)
    assert all(arts.exists(d) for d in blobs)


def test_small_results_ride_in_the_outcome_record_and_are_checked(arts):
    m = write_paged_manifest(arts, calls(aws_tasks.square, [(12,)] * 2))
    assert run_spec(arts, m.array, 0) == 0
    rec = protocol.read_outcome(arts, m.specs[0])
    assert rec["result_data"] == "144" and protocol.result_bytes(arts, rec) == b"144"
    forged = {**rec, "result_data": "145"}  # does not hash to `result`: the stored blob is read instead
    assert protocol.to_outcome(arts, forged).value == 144
