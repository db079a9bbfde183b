"""Regressions of the engine issue: each of these failed before the engine became one state machine."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import flows_basic as fb
import pytest
from conftest import RESOURCES, cli

import gflow
from gflow.states import State

FLOWS = str(RESOURCES / "flows_basic.py")


def test_cache_hits_stay_cached_run_after_run(store, work):
    """A CACHED record used to point at a blob that was never written: every other run recomputed."""
    states = []
    for _ in range(4):
        res = fb.cached_flow.run(work, [1, 2, 3], executor="local", return_run=True)
        assert res.value == [1, 4, 9]
        trs = [t for t in store.task_runs(res.id) if t.name == "cached_square"]
        states.append({t.state for t in trs})
        for t in trs:  # every row that claims a result leads to a readable one
            assert t.result_ref and (t.result_inline is not None)
    assert states == [{State.SUCCEEDED}, {State.CACHED}, {State.CACHED}, {State.CACHED}]
    assert [fb.count(work, f"square-{x}") for x in (1, 2, 3)] == [1, 1, 1]


@pytest.mark.parametrize("kind", ["zero", "empty", "list"])
def test_a_cached_falsy_value_is_a_hit(work, kind):
    assert fb.falsy_twice.run(work, kind, executor="local") == [{"zero": 0, "empty": "", "list": []}[kind]] * 2
    assert fb.count(work, f"falsy-{kind}") == 1


def test_resume_of_a_resume_recomputes_nothing_finished(store, work):
    first = fb.resumable.run(work, 4, executor="local", return_run=True)
    assert first.state is State.FAILED
    second = fb.resumable.run(work, 4, executor="local", return_run=True, resume_from=first.id)
    assert second.state is State.FAILED
    (Path(work) / "allow").write_text("")
    third = fb.resumable.run(work, 4, executor="local", return_run=True, resume_from=second.id)
    assert third.state is State.SUCCEEDED and third.value == 6
    assert [fb.count(work, f"record-{i}") for i in range(4)] == [1, 1, 1, 1]
    cached = [t for t in store.task_runs(third.id) if t.state is State.CACHED]
    assert len(cached) == 4 and all(t.result_inline is not None for t in cached)


def test_a_subflow_ends_after_all_of_its_task_events(store):
    res = fb.calls_big_subflow.run(600, executor="local", return_run=True)
    assert res.value == sum(range(1, 601))
    (child,) = [r for r in store.list_runs(limit=10) if r.parent_run == res.id]
    evs = store.events(child.id)
    assert evs[-1].task_run_id is None and evs[-1].state is State.SUCCEEDED  # the run's end is its last event
    assert len([e for e in evs if e.task_run_id]) == 601 * 4


def test_runs_do_not_leak_file_descriptors():
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    for _ in range(20):
        fb.map_reduce.run(2, executor="inline")
    before = proc.num_fds()
    for _ in range(100):
        fb.map_reduce.run(2, executor="inline")
    # a leak grows with the runs (one store per run: 100+ here); a few may come from other tests' background
    # threads finishing (a server, a browser) while this one runs
    assert proc.num_fds() - before <= 10


def test_process_pool_records_the_real_start(store):
    res = fb.one_second_flow.run(executor="local://processes?workers=1", return_run=True)
    (tr,) = store.task_runs(res.id)
    assert tr.ended - tr.started >= 0.9  # it used to record 0.0 s: RUNNING stamped when the outcome came


def test_success_on_a_retry_clears_the_earlier_attempts_error(store, work):
    res = fb.flaky_flow.run(work, 1, executor="local", return_run=True)
    (tr,) = store.task_runs(res.id)
    assert tr.state is State.SUCCEEDED and tr.attempt == 2 and tr.error is None and tr.traceback is None
    assert any(e.state is State.RETRYING and "flaky failure 1" in (e.message or "") for e in store.events(res.id))


def test_tasks_route_to_their_own_executor_and_it_is_recorded(store):
    res = fb.routed_flow.run(3, executor="local", return_run=True)
    assert res.value == [0, 2, 4, 1, 2, 3]
    by_name = {}
    for t in store.task_runs(res.id):
        by_name.setdefault(t.name, set()).add(t.executor)
    assert by_name == {"routed_inline": {"inline"}, "inc": {"local"}}


def test_a_profile_routes_a_task_by_name(store, tmp_path):
    (tmp_path / "gflow.toml").write_text('[profiles.default]\nexecutor = "local"\n'
                                         '[profiles.default.executors]\ninc = "inline"\n')
    res = fb.map_reduce.run(3, return_run=True)
    assert {t.name: t.executor for t in store.task_runs(res.id)} == {"inc": "inline", "total": "local"}


def test_a_task_runs_as_a_run_of_its_own(store):
    res = fb.inc.run(41, executor="local", return_run=True)
    assert res.value == 42 and store.get_run(res.id).flow == "inc"
    r = cli("run", f"{FLOWS}:add", "--param", "x=1", "--param", "y=2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == 3


def test_empty_state_file_is_refused_not_treated_as_new(gflow_home):
    db = gflow_home / "gflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"")
    r = cli("runs", "ls")
    assert r.returncode == 1 and "empty file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(gflow.StoreError, match="empty file"):
        fb.map_reduce.run(2)


def test_ambiguous_run_prefix_lists_candidates(store):
    ids = [fb.map_reduce.run(1, executor="inline", return_run=True).id for _ in range(2)]
    prefix = os.path.commonprefix(ids)
    r = cli("runs", "show", prefix)
    assert r.returncode == 1 and "ambiguous" in r.stderr and all(i in r.stderr for i in ids)


def test_rich_markup_in_messages_is_shown_literally():
    r = cli("run", f"{FLOWS}:map_reduce", "-e", "nosuch[dask]")
    assert r.returncode == 1 and "nosuch[dask]" in r.stderr


def test_params_are_shown_as_the_user_wrote_them(store):
    from gflow.objects import Protein

    res = fb.protein_flow.run(Protein(sequence="MKTAYIAK"), 2, executor="inline", return_run=True)
    r = cli("runs", "show", res.id)
    assert r.returncode == 0 and "__gflow__" not in r.stdout and '"sequence": "MKTAYIAK"' in r.stdout


# -- code changes (a project written to disk, run in fresh processes as a user would) --------------------------

def _project(tmp_path: Path, offset: int, fail_at: int | None) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    (proj / "util.py").write_text(f"def offset():\n    return {offset}\n")
    fail = f"    if x == {fail_at}:\n        raise ValueError('bad input {fail_at}')\n" if fail_at is not None else ""
    (proj / "pipeline.py").write_text(textwrap.dedent('''
        import os
        import gflow
        import util

        @gflow.task(cache=True)
        def shifted(x: int) -> int:
            return x + util.offset()

        @gflow.task
        def score(x: int) -> int:
            with open(os.environ["COUNTS"], "a") as f:
                f.write(f"{x}\\n")
        ''') + fail + textwrap.dedent('''
            return x * 10

        @gflow.task
        def total(xs: list) -> int:
            return sum(xs)

        @gflow.flow
        def shift_total(n: int) -> int:
            return total(shifted.map(range(n)))

        @gflow.flow
        def scores(n: int) -> int:
            return total(score.map(range(n)))
        '''))
    return proj


def _runs(res) -> str:
    return [line.split()[1] for line in res.stderr.splitlines() if line.startswith("run ")][-1]


def test_changing_a_helper_module_invalidates_the_cache(tmp_path):
    proj = _project(tmp_path, 1000, None)
    target = f"{proj}/pipeline.py:shift_total"
    r1 = cli("run", target, "-p", "n=3", "--no-progress")
    assert r1.returncode == 0 and json.loads(r1.stdout) == 3003, r1.stderr
    r2 = cli("run", target, "-p", "n=3", "--no-progress")
    assert json.loads(r2.stdout) == 3003
    _project(tmp_path, 3000, None)  # only the helper changes
    r3 = cli("run", target, "-p", "n=3", "--no-progress")
    assert r3.returncode == 0 and json.loads(r3.stdout) == 9003, "a stale cached result was reused"


def test_resume_after_a_fix_reuses_what_finished_and_says_what_changed(tmp_path):
    counts = tmp_path / "counts.txt"
    env = {"COUNTS": str(counts)}
    proj = _project(tmp_path, 0, fail_at=3)
    r = cli("run", f"{proj}/pipeline.py:scores", "-p", "n=8", "--no-progress", env=env)
    assert r.returncode == 1 and "bad input 3" in r.stderr
    failed = _runs(r)
    assert sorted(counts.read_text().split()) == [str(i) for i in range(8)]
    _project(tmp_path, 0, fail_at=None)  # the fix
    counts.write_text("")
    r = cli("resume", failed, "--no-progress", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == sum(i * 10 for i in range(8)), r.stderr
    assert counts.read_text().split() == ["3"], "finished calls were recomputed"
    assert "code changed since: score" in r.stderr
    # asked to, a resume recomputes the calls whose code changed
    _project(tmp_path, 0, fail_at=5)
    r = cli("run", f"{proj}/pipeline.py:scores", "-p", "n=8", "--no-progress", env=env)
    failed = _runs(r)
    _project(tmp_path, 0, fail_at=None)
    counts.write_text("")
    r = cli("resume", failed, "--rerun-changed", "--no-progress", env=env)
    assert r.returncode == 0 and sorted(counts.read_text().split()) == [str(i) for i in range(8)]


def test_two_resumes_of_one_run_cannot_both_run(store, work):
    first = fb.resumable.run(work, 3, executor="local", return_run=True)
    (Path(work) / "allow").write_text("")
    ok = fb.resumable.run(work, 3, executor="local", return_run=True, resume_from=first.id)
    assert ok.state is State.SUCCEEDED
    with pytest.raises(gflow.ResumeRefused, match=ok.id):
        fb.resumable.run(work, 3, executor="local", resume_from=first.id)
    again = fb.resumable.run(work, 3, executor="local", return_run=True, resume_from=first.id, force=True)
    assert again.state is State.SUCCEEDED
    assert store.get_run(first.id).resumed_by == again.id
