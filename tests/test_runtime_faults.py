"""Issue 16 (runtime faults found by probing): a bad setting found mid-run, a full state disk, private state
files, a killed driver while a worker holds the GIL. Figures: docs/RELIABILITY.md."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from conftest import cli

from gflow.errors import ConfigError
from gflow.states import State

KEY = "k" * 40


@pytest.fixture
def pickle_flow(tmp_path, monkeypatch):
    (tmp_path / "rt_pickle_flow.py").write_text(textwrap.dedent("""
        import gflow

        class Box:
            def __init__(self, n):
                self.n = n

        @gflow.task(pickle=True)
        def box(n: int):
            return Box(n)

        @gflow.task
        def plain(n: int) -> int:
            return n + 1

        @gflow.flow
        def boxed(n: int = 3):
            return box(plain(n))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import rt_pickle_flow

    yield rt_pickle_flow
    sys.modules.pop("rt_pickle_flow", None)


# -- item 2: a configuration error found mid-run fails the run cleanly -------------------------------------
def _open_key(home) -> str:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "signing.key"
    path.write_text("a" * 64 + "\n")
    os.chmod(path, 0o644)
    return str(path)


@pytest.mark.parametrize("executor", ["local", "local://processes?workers=1"])
def test_a_signing_key_others_can_read_fails_the_run_with_one_line(gflow_home, store, pickle_flow, executor):
    path = _open_key(gflow_home)
    res = pickle_flow.boxed.run(3, executor=executor, return_run=True)
    assert res.state is State.FAILED
    assert isinstance(res.error, ConfigError) and "chmod 600" in str(res.error)
    run = store.get_run(res.id)
    assert run.state is State.FAILED and run.error.startswith("ConfigError: signing key file") and path in run.error
    assert "crashed" not in run.error and "\n" not in run.error
    trs = {t.name: t for t in store.task_runs(res.id)}
    assert trs["plain"].state is State.SUCCEEDED
    assert trs["box"].state.terminal  # nothing left QUEUED or RUNNING
    # fixed, the run resumes: the call that succeeded is reused
    os.chmod(path, 0o600)
    again = pickle_flow.boxed.run(3, executor=executor, resume_from=res.id, return_run=True)
    assert again.state is State.SUCCEEDED and again.value.n == 4


def test_gflow_run_reports_the_open_signing_key_in_one_line(gflow_home, tmp_path, pickle_flow):
    _open_key(gflow_home)
    r = cli("run", f"{tmp_path / 'rt_pickle_flow.py'}:boxed", "--no-progress",
            env={"PYTHONPATH": str(tmp_path), "GFLOW_HOME": str(gflow_home)})
    assert r.returncode == 1
    assert "chmod 600" in r.stderr and "crashed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "FAILED" in r.stderr


def test_a_bug_in_the_engine_still_says_crashed(store, pickle_flow, monkeypatch):
    from gflow.flows._core import Core

    real = Core.handle_many

    def broken(self, events, now):
        if any(type(e).__name__ == "Finished" for e in events):
            raise KeyError("a bug")
        return real(self, events, now)

    monkeypatch.setattr(Core, "handle_many", broken)
    with pytest.raises(Exception, match="the gflow engine crashed: KeyError"):
        pickle_flow.boxed.run(3, executor="local")


# -- item 9: a short key names what the user set -------------------------------------------------------------
def test_a_short_signing_key_names_the_variable_the_user_set(tmp_path, pickle_flow):
    r = cli("run", f"{tmp_path / 'rt_pickle_flow.py'}:boxed", "--no-progress",
            env={"PYTHONPATH": str(tmp_path), "GFLOW_SIGNING_KEY": "short"})
    assert r.returncode == 1 and "GFLOW_SIGNING_KEY: the signing key must be at least 32" in r.stderr, r.stderr
    assert "profile" not in r.stderr
    (tmp_path / "gflow.toml").write_text('[profiles.default]\nsigning_key = "short"\n')
    r = cli("run", f"{tmp_path / 'rt_pickle_flow.py'}:boxed", "--no-progress", cwd=str(tmp_path),
            env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1 and "profile setting signing_key" in r.stderr, r.stderr


# -- item 3: a full state disk: give up after a bounded time, resumable ------------------------------------
class FakeClock:
    """Time for the recorder's retries: its sleeps advance this clock instead of waiting."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.slept += seconds


class FullStore:
    """A real SQLite store whose disk reports full while ``full`` is set (a stand-in for the fault only)."""

    def __init__(self, store, full: bool = True):
        self.store = store
        self.full = full
        self.url = store.url
        self.can_offload = False
        self.tries = 0

    def apply_rows(self, rows):
        self.tries += 1
        if self.full:
            from gflow.errors import StoreFull

            raise StoreFull(f"state store {self.store.path}: record transitions failed: the disk is full")
        return self.store.apply_rows(rows)

    def __getattr__(self, name):
        return getattr(self.store, name)


def _full_recorder(tmp_path, *, full=True, retry=30.0):
    from gflow.artifacts import open_artifacts
    from gflow.flows._recorder import Recorder
    from gflow.store import RunRecord, open_store

    st = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    st.create_run(RunRecord(id="r", flow="f"))
    clock = FakeClock()
    calls: list[str] = []
    rec = Recorder(FullStore(st, full), open_artifacts(str(tmp_path / "a")), interval=0.01, clock=clock,
                   sleep=clock.sleep, writer_mode="thread", state_retry=retry,
                   on_state_error=lambda: calls.append("gave up"))
    return st, rec, clock, calls


def test_the_recorder_gives_up_on_a_full_state_disk_after_the_bound(tmp_path):
    import time

    from gflow.errors import StoreFull
    from gflow.flows._core import Core
    from gflow.flows._events import BodyReturned, Flush, Flushed, RecordRun, RunStarted
    from gflow.store import RunRecord
    from gflow.store.base import trow

    st, rec, clock, calls = _full_recorder(tmp_path)
    core = Core()  # decides how the run ends; the recorder only reports what it could not store
    core.handle(RunStarted("start", RunRecord(id="r", flow="f")), 1.0)
    t0 = time.monotonic()
    rec.add_many([trow("r.1", "r", State.RUNNING, 1, 1.0, task="m:t", name="t")])
    (flush,) = [i for i in core.handle(BodyReturned("ret", "r", 5), 2.0) if isinstance(i, Flush)]
    reported: list = []
    rec.add_marker(lambda: reported.append(Flushed("flushed", flush.run_id, rec.state_error)))
    rec.flush(timeout=10)  # returns: nothing waits forever
    assert time.monotonic() - t0 < 5  # the 30 s bound passed on the fake clock only
    assert isinstance(rec.state_error, StoreFull) and "after 30s" in str(rec.state_error)
    assert "GFLOW_STATE_RETRY_SECONDS" in str(rec.state_error) and "disk is full" in str(rec.state_error)
    assert 30 <= clock.slept < 36 and calls == ["gave up"]
    assert rec.unrecorded == 1  # the transition
    (run_record,) = [i for i in core.handle(reported[0], 3.0) if isinstance(i, RecordRun)]
    rec.add_run(run_record)
    rec.flush(timeout=10)
    run = st.get_run("r")  # the run record still fits (a small write) ...
    assert run.state is State.FAILED and "StoreFull" in run.error  # ... and never claims SUCCEEDED
    tries = rec.store.tries
    rec.add_many([trow("r.2", "r", State.RUNNING, 1, 3.0, task="m:t", name="t")])
    rec.flush(timeout=10)
    assert rec.store.tries == tries + 1 and rec.unrecorded == 2  # after giving up: one try per write
    rec.close()


def test_the_recorder_keeps_retrying_within_the_bound_and_loses_nothing(tmp_path):

    from gflow.store.base import trow

    st, rec, clock, calls = _full_recorder(tmp_path)
    base = FakeClock.sleep

    def sleep(seconds):
        base(clock, seconds)
        if clock.slept >= 20:
            rec.store.full = False  # space freed after 20 s (of fake time)

    rec.sleep = sleep
    rec.add_many([trow("r.1", "r", State.RUNNING, 1, 1.0, task="m:t", name="t")])
    rec.flush(timeout=10)
    assert rec.state_error is None and calls == [] and rec.unrecorded == 0
    assert st.counts("r") == {"RUNNING": 1}
    rec.close()


def test_a_bad_state_retry_setting_is_one_line_before_anything_runs(store, monkeypatch):
    import flows_basic as fb

    monkeypatch.setenv("GFLOW_STATE_RETRY_SECONDS", "soon")
    with pytest.raises(ConfigError, match="GFLOW_STATE_RETRY_SECONDS='soon': must be a positive number"):
        fb.map_reduce.run(3)
    assert store.list_runs() == []


@pytest.fixture
def tiny_state_disk(tmp_path):
    """A real 400 KiB tmpfs for the state database (root can mount one here and in CI)."""
    import subprocess

    mnt = tmp_path / "tiny-state"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_state_disk_ends_the_run_and_resume_completes_it(tiny_state_disk, gflow_home, monkeypatch):
    import subprocess
    import time

    import flows_basic as fb

    from gflow.errors import StoreFull
    from gflow.store import open_store

    monkeypatch.setenv("GFLOW_STATE_RETRY_SECONDS", "1")
    url = f"sqlite:///{tiny_state_disk / 'gflow.db'}"
    t0 = time.monotonic()
    res = fb.map_reduce.run(3000, store=url, return_run=True)
    took = time.monotonic() - t0
    assert res.state is State.FAILED and isinstance(res.error, StoreFull), res.error
    assert "disk is full" in str(res.error) and str(tiny_state_disk) in str(res.error)
    assert took < 30
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_state_disk)], check=True)
    again = fb.map_reduce.run(3000, store=url, resume_from=res.id, return_run=True)
    assert again.state is State.SUCCEEDED and again.value == sum(i + 1 for i in range(3000))
    st = open_store(url)
    try:
        assert st.get_run(res.id).state is State.FAILED  # recorded (DriverLost or StoreFull), never RUNNING
        assert st.counts(again.id).get("SUCCEEDED", 0) + st.counts(again.id).get("CACHED", 0) >= 3000
    finally:
        st.close()


def test_sqlite_names_a_full_disk_not_a_failed_rollback(tiny_state_disk):
    from gflow.errors import StoreFull
    from gflow.store import RunRecord, open_store
    from gflow.store.base import trow

    st = open_store(f"sqlite:///{tiny_state_disk / 'gflow.db'}")
    try:
        st.create_run(RunRecord(id="r", flow="f"))
        with pytest.raises(StoreFull, match="disk is full"):
            for i in range(100):
                st.apply_rows([trow(f"r.{i}.{j}", "r", State.RUNNING, 1, 1.0, task="m:t", name="t" * 500)
                               for j in range(200)])
    finally:
        st.close()


# -- item 5: state is private under umask 022 -------------------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_a_new_home_and_its_state_are_private(gflow_home, umask_022, pickle_flow):
    import flows_basic as fb

    assert not gflow_home.exists()
    assert "GFLOW_SIGNING_KEY" not in os.environ  # the home's key file is used (and created)
    assert fb.map_reduce.run(5) == 15
    assert pickle_flow.boxed.run(1).n == 2
    assert _mode(gflow_home) == 0o700
    made = {p.name: _mode(p) for p in gflow_home.iterdir()}
    assert made["gflow.db"] == 0o600 and made["signing.key"] == 0o600 and made["artifacts"] == 0o700
    for name in ("gflow.db-wal", "gflow.db-shm"):  # SQLite's own files follow the database's mode
        if name in made:
            assert made[name] == 0o600, name


def test_a_new_sqlite_store_elsewhere_is_private_too(tmp_path, umask_022):
    from gflow.store import RunRecord, open_store

    st = open_store(f"sqlite:///{tmp_path / 'new' / 'deep' / 'state.db'}")
    try:
        st.create_run(RunRecord(id="r", flow="f"))
        files = sorted((tmp_path / "new" / "deep").iterdir())
        assert {p.name for p in files} >= {"state.db", "state.db-wal", "state.db-shm"}
        assert all(_mode(p) == 0o600 for p in files), [(p.name, oct(_mode(p))) for p in files]
        assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "deep") == 0o700
    finally:
        st.close()
    # an existing store is opened as it is (its owner chose its mode)
    os.chmod(tmp_path / "new" / "deep" / "state.db", 0o640)
    open_store(f"sqlite:///{tmp_path / 'new' / 'deep' / 'state.db'}").close()
    assert _mode(tmp_path / "new" / "deep" / "state.db") == 0o640


def test_a_rollback_journal_is_private(tmp_path, umask_022):
    import sqlite3

    from gflow.store import open_store

    path = tmp_path / "j" / "gflow.db"
    open_store(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_size_limit=-1")
    conn.execute("PRAGMA journal_mode=PERSIST")  # the journal file stays, so its mode can be read
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("COMMIT")
    journal = tmp_path / "j" / "gflow.db-journal"
    assert journal.exists() and _mode(journal) == 0o600
    conn.close()


# -- item 7: pool workers die with the driver even while a task holds the GIL ------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead for our purpose
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_workers_die_with_the_driver_while_a_task_holds_the_gil(tmp_path):
    import signal
    import subprocess
    import time

    from conftest import RESOURCES, ROOT

    (tmp_path / "rt_gil_flow.py").write_text(textwrap.dedent("""
        import os
        import gflow

        @gflow.task
        def hog(folder: str) -> int:
            open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
            return sum(range(10 ** 12))  # one C call that never lets go of the GIL

        @gflow.flow
        def hogs(folder: str) -> int:
            return hog(folder)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(RESOURCES), str(ROOT)])}
    driver = subprocess.Popen([sys.executable, "-m", "gflow", "run", f"{tmp_path / 'rt_gil_flow.py'}:hogs", "-p",
                               f"folder={tmp_path}", "-e", "local://processes?workers=1", "--no-progress"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while worker is None and time.monotonic() < deadline:
            pids = list(tmp_path.glob("pid-*"))
            worker = int(pids[0].name.split("-")[1]) if pids else None
            time.sleep(0.05)
        assert worker is not None, "the task never started"
        time.sleep(0.3)  # inside sum() now
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and _alive(worker):
            time.sleep(0.01)
        gone = time.monotonic() - t0
        assert not _alive(worker), "the worker outlived the driver while its task held the GIL"
        print(f"\nworker (task holding the GIL) gone {gone * 1000:.0f} ms after the driver's SIGKILL")
    finally:
        if driver.poll() is None:
            driver.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
