"""retryTask and replayRun: the server starts a real driver process (`python -m gflow resume/replay`),
watches it, records it, and answers with the new run's id; failures to start are clear errors."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("strawberry")
httpx = pytest.importorskip("httpx")

from server_flows import flaky_sum  # noqa: E402  (tests/resources is on sys.path: the drivers import it too)
from server_support import driver_env  # noqa: E402

from gflow.server.app import create_app  # noqa: E402
from gflow.server.auth import AuthConfig  # noqa: E402
from gflow.server.drivers import DriverConfig  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, open_store  # noqa: E402

WRITE = "write-token-0123456789"
LAUNCH = "id runId kind sourceRun taskRun pid host logFile command started exitCode state"
RETRY = f"mutation($id: ID!) {{ retryTask(taskRunId: $id) {{ {LAUNCH} }} }}"
REPLAY = f"mutation($id: ID!) {{ replayRun(id: $id) {{ {LAUNCH} }} }}"


@pytest.fixture
def db(gflow_home) -> str:
    url = f"sqlite:///{gflow_home / 'gflow.db'}"
    open_store(url).close()
    return url


@pytest.fixture
def serve_app(db, tmp_path):
    """serve_app(**driver options) -> (graphql poster, driver log dir)."""
    stack = []

    def start(**driver):
        logs = tmp_path / "drivers"
        cfg = DriverConfig(store=db, log_dir=str(logs), **{"env": driver_env(), **driver})
        cm = serve(create_app(open_store(db), auth=AuthConfig(write_tokens=(WRITE,)), drivers=cfg, close_store=True))
        url = cm.__enter__()
        stack.append(cm)
        client = httpx.Client(base_url=url, timeout=60)

        def post(query, token=WRITE, **variables):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return client.post("/graphql", json={"query": query, "variables": variables}, headers=headers).json()

        return post, logs

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def _failed_run(db):
    r = flaky_sum.run(4, store=db, executor="local", return_run=True)
    assert r.state is State.FAILED
    st = open_store(db)
    bad = next(t for t in st.task_runs(r.id) if t.state is State.FAILED)
    return r, bad, st


def _wait(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_retry_task_resumes_the_run_in_a_supervised_driver(serve_app, db, gflow_home):
    """`python -m gflow resume RUN --run-id NEW` in a real process: the mutation answers with NEW at once,
    the driver's output is logged, its exit code recorded, and the resumed run reuses what finished."""
    r, bad, st = _failed_run(db)
    (gflow_home / "fixed").touch()  # the bug is fixed: the retried task will succeed
    post, logs = serve_app()
    out = post(RETRY, id=bad.id)
    assert "errors" not in out, out
    x = out["data"]["retryTask"]
    assert x["kind"] == "resume" and x["sourceRun"] == r.id and x["taskRun"] == bad.id and x["pid"] > 0
    assert x["command"][1:] == ["-m", "gflow", "resume", r.id, "--run-id", x["runId"]] and x["id"] == x["runId"]
    assert Path(x["logFile"]) == logs / f"{x['runId']}.log"
    q = f"""query($id: ID!) {{ run(id: $id) {{
             launches {{ {LAUNCH} logTail }} derivedRuns {{ id state resumedFrom }} }} }}"""
    _wait(lambda: post(q, id=r.id)["data"]["run"]["launches"][0]["exitCode"] is not None, what="the driver to exit")
    got = post(q, id=r.id)["data"]["run"]
    launch = got["launches"][0]
    assert launch["exitCode"] == 0 and launch["state"] == "exited", launch["logTail"]
    assert "SUCCEEDED" in launch["logTail"]  # the driver's own output, captured
    assert got["derivedRuns"] == [{"id": x["runId"], "state": "SUCCEEDED", "resumedFrom": r.id}]
    counts = st.counts(x["runId"])
    assert counts.get("CACHED", 0) == 3 and counts.get("SUCCEEDED", 0) == 2, counts  # 3 reused; flaky(2) + total
    made = post("query($id: ID!) { run(id: $id) { launch { runId kind exitCode } } }", id=x["runId"])
    assert made["data"]["run"]["launch"] == {"runId": x["runId"], "kind": "resume", "exitCode": 0}
    # the launch record outlives the server: a new server over the same log folder still lists it
    post2, _ = serve_app()
    again = post2(q, id=r.id)["data"]["run"]["launches"]
    assert [(a["pid"], a["exitCode"]) for a in again] == [(x["pid"], 0)]
    # a second retry of the same task: gflow resume refuses (the run already has a successful resume), clearly
    err = post2(RETRY, id=bad.id)["errors"][0]
    assert err["extensions"]["code"] == "DRIVER_FAILED" and "already resumed by run" in err["message"], err


def test_a_driver_that_fails_at_once_is_a_clear_error(serve_app, db):
    """A driver that exits before its run exists answers DRIVER_FAILED with the reason from its log."""
    st = open_store(db)
    st.create_run(RunRecord(id="broken-run", flow="gone", flow_path="no_such_module_xyz:gone", created=time.time()))
    st.set_run_state("broken-run", State.RUNNING, time.time())
    st.set_run_state("broken-run", State.FAILED, time.time(), error="boom")
    from gflow.store import Transition

    st.apply([Transition("broken-run.1", "broken-run", State.PENDING, 1, time.time(), task="m:t", name="t"),
              Transition("broken-run.1", "broken-run", State.FAILED, 1, time.time(), error="x")])
    post, _ = serve_app(start_grace=60)  # however slow the machine, the driver exits well within this
    err = post(RETRY, id="broken-run.1")["errors"][0]
    assert err["extensions"]["code"] == "DRIVER_FAILED", err
    assert "exited with code" in err["message"] and "before its run started" in err["message"]
    assert "log:" in err["message"]


def test_replay_checks_the_run_then_starts_a_driver(serve_app, db):
    r = flaky_sum.run(2, store=db, executor="local", return_run=True)  # no image: cannot be replayed by image
    post, _ = serve_app(start_grace=60)
    err = post(REPLAY, id=r.id)["errors"][0]
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and "no image tag" in err["message"]
    assert post(REPLAY, token=None, id=r.id)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # a run that recorded an image this host does not have: the replay driver starts, then fails clearly
    st = open_store(db)
    st.update_run(r.id, image_tag="gflow-test/missing-image:0123456789ab")
    err = post(REPLAY, id=r.id)["errors"][0]
    assert err["extensions"]["code"] == "DRIVER_FAILED" and "replay driver" in err["message"], err


def test_retry_refuses_what_cannot_be_retried(serve_app, db, gflow_home):
    r, bad, st = _failed_run(db)
    post, _ = serve_app(python="/nonexistent/python3")
    ok = next(t for t in st.task_runs(r.id) if t.state is State.SUCCEEDED)
    err = post(RETRY, id=ok.id)["errors"][0]
    assert err["extensions"]["code"] == "CONFLICT" and "only a FAILED or CANCELLED" in err["message"]
    err = post(RETRY, id=bad.id)["errors"][0]  # the interpreter is missing: the process cannot start
    assert err["extensions"]["code"] == "DRIVER_FAILED" and "could not start" in err["message"], err
    assert post(RETRY, token=None, id=bad.id)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert post(RETRY, id="x" * 300)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # a run whose driver is alive (this process) is still running: cancel it first
    st.create_run(RunRecord(id="live-run", flow="f", created=time.time(), host=socket.gethostname(), pid=os.getpid()))
    st.set_run_state("live-run", State.RUNNING, time.time())
    from gflow.store import Transition

    st.apply([Transition("live-run.1", "live-run", State.PENDING, 1, time.time(), task="m:t", name="t"),
              Transition("live-run.1", "live-run", State.FAILED, 1, time.time(), error="x")])
    err = post(RETRY, id="live-run.1")["errors"][0]
    assert err["extensions"]["code"] == "CONFLICT" and "still RUNNING" in err["message"]


def test_a_gflow_folder_in_the_servers_working_folder_does_not_shadow_the_package(serve_app, db, gflow_home,
                                                                                 tmp_path, monkeypatch):
    """The server runs from the parent of a clone named gflow: its driver still imports the installed package."""
    from server_support import RESOURCES

    here = tmp_path / "lab"
    (here / "gflow" / "gflow").mkdir(parents=True)
    (here / "gflow" / "README.md").write_text("a clone of gflow\n")
    monkeypatch.chdir(here)
    r, bad, st = _failed_run(db)
    (gflow_home / "fixed").touch()
    post, _ = serve_app(env={"PYTHONPATH": str(RESOURCES)})  # gflow itself from the installed package only
    x = post(RETRY, id=bad.id)
    assert "errors" not in x, x
    run_id = x["data"]["retryTask"]["runId"]
    q = "query($id: ID!) { run(id: $id) { launches { exitCode logTail } } }"
    _wait(lambda: post(q, id=r.id)["data"]["run"]["launches"][0]["exitCode"] is not None, what="the driver to exit")
    launch = post(q, id=r.id)["data"]["run"]["launches"][0]
    assert launch["exitCode"] == 0, launch["logTail"]
    assert st.get_run(run_id).state is State.SUCCEEDED
