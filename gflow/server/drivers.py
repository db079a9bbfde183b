"""Drivers the server starts for ``retryTask`` and ``replayRun``, and watches.

The server never runs flows itself. It hands the work to a driver process, the same command a
person would type:

- ``retryTask``: ``python -m gflow resume OLD_RUN --run-id NEW_RUN`` (the failed task and what
  depends on it run again; every finished call is taken from the old run);
- ``replayRun``: ``python -m gflow replay OLD_RUN --run-id NEW_RUN``.

The new run id is chosen here, so the mutation answers with it at once. The driver records the new
run in the store like any run (linked to the old one by ``resumed_from`` / ``replay_of``). The
server keeps what it started: pid, command, log file (stdout and stderr), exit code, in memory and
in a small JSON file beside the log (``$GFLOW_HOME/server/drivers/NEW_RUN.{json,log}``), so a
restarted server still shows them. Drivers run in their own session: stopping the server does not
stop the runs it started (cancel them with ``cancelRun``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gflow.errors import GflowError

log = logging.getLogger("gflow.server.drivers")

KINDS = ("resume", "replay")


class DriverStartFailed(GflowError):
    """A driver process could not be started, or exited at once; the message carries its log's tail."""


@dataclass(frozen=True)
class DriverConfig:
    """How the server starts drivers.

    Attributes:
        command: The driver's command line; ``{python}``, ``{kind}`` (resume or replay), ``{source}`` (the
            run to resume or replay) and ``{new}`` (the new run's id) are filled in. Change it to start
            drivers through a wrapper (``srun``, ``nice``, a container).
        python: The interpreter that runs ``-m gflow`` (default: the server's).
        store: State store URL the driver records into (``GFLOW_STORE``; default: the server's store's URL).
        events: Redis live-layer URL (``GFLOW_EVENTS``), when the server has one.
        profile: Profile of ``gflow.toml`` (``GFLOW_PROFILE``).
        log_dir: Where logs and launch records go (default: ``$GFLOW_HOME/server/drivers``).
        start_grace: Seconds to wait for a driver that fails at once (or for its run to appear).
        env: Extra environment for the driver (e.g. ``PYTHONPATH`` so it can import the flow).
    """

    command: tuple[str, ...] = ("{python}", "-m", "gflow", "{kind}", "{source}", "--run-id", "{new}")
    python: str = sys.executable
    store: str | None = None
    events: str | None = None
    profile: str | None = None
    log_dir: str | None = None
    start_grace: float = 3.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Launch:
    """One driver the server started."""

    run_id: str  # the run the driver creates
    kind: str  # resume | replay
    source_run: str
    task_run: str | None
    pid: int
    host: str
    log_file: str
    command: list[str]
    started: float
    exit_code: int | None = None
    ended: float | None = None

    @property
    def state(self) -> str:
        if self.exit_code is not None:
            return "exited"
        if self.host != socket.gethostname():
            return "unknown"
        return "running" if _alive(self.pid) else "gone"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: str | Path, max_bytes: int = 8192) -> str:
    """The last ``max_bytes`` of a log file ('' if it is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max(0, max_bytes)))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Drivers:
    """Starts and watches driver processes; one per server."""

    def __init__(self, config: DriverConfig, store_url: str | None):
        from gflow.config import gflow_home

        self.config = config
        self.store_url = config.store or store_url
        self.dir = Path(config.log_dir) if config.log_dir else gflow_home() / "server" / "drivers"
        self._lock = threading.Lock()
        self._launches: dict[str, Launch] = {}
        self._exited: dict[str, threading.Event] = {}
        self._load()

    def _load(self) -> None:
        """Launch records a previous server left (newest 1,000)."""
        try:
            files = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime)[-1000:]
        except OSError:
            return
        for p in files:
            try:
                rec = Launch(**json.loads(p.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            self._launches[rec.run_id] = rec

    def argv(self, kind: str, source_run: str, new_run: str) -> list[str]:
        """The driver's command line."""
        fill = {"python": self.config.python, "kind": kind, "source": source_run, "new": new_run}
        return [part.format(**fill) for part in self.config.command]

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.config.env}
        if self.store_url:
            env["GFLOW_STORE"] = self.store_url
        if self.config.events:
            env["GFLOW_EVENTS"] = self.config.events
        if self.config.profile:
            env["GFLOW_PROFILE"] = self.config.profile
        env.setdefault("PYTHONUNBUFFERED", "1")
        # `python -m gflow` would put the server's working folder first on sys.path, and a `gflow/` folder
        # there (the parent of a clone named gflow) would shadow the package: never prepend it (Python 3.11's
        # -P; the flow itself is loaded by its recorded path)
        env.setdefault("PYTHONSAFEPATH", "1")
        return env

    def start(self, kind: str, source_run: str, new_run: str, task_run: str | None = None) -> Launch:
        """Start a driver (does not wait); raises DriverStartFailed if the process cannot start."""
        if kind not in KINDS:
            raise ValueError(f"unknown driver kind {kind!r}; known: {', '.join(KINDS)}")
        argv = self.argv(kind, source_run, new_run)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            log_path = self.dir / f"{new_run}.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=self._env(), start_new_session=True, close_fds=True)
        except OSError as e:
            raise DriverStartFailed(f"could not start the {kind} driver ({argv[0]}): {e.strerror or e}") from None
        launch = Launch(run_id=new_run, kind=kind, source_run=source_run, task_run=task_run, pid=proc.pid,
                        host=socket.gethostname(), log_file=str(log_path), command=argv, started=time.time())
        with self._lock:
            self._launches[new_run] = launch
            self._exited[new_run] = threading.Event()
        self._save(launch)
        threading.Thread(target=self._reap, args=(launch, proc), name=f"gflow-driver-{proc.pid}",
                         daemon=True).start()
        log.info("started %s driver pid %d for run %s -> %s (log %s)", kind, proc.pid, source_run, new_run, log_path)
        return launch

    def _reap(self, launch: Launch, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            launch.exit_code = code
            launch.ended = time.time()
            exited = self._exited.pop(launch.run_id, None)
        self._save(launch)
        if exited is not None:
            exited.set()
        log.info("%s driver pid %d (run %s) exited with code %d", launch.kind, launch.pid, launch.run_id, code)

    def _save(self, launch: Launch) -> None:
        path = self.dir / f"{launch.run_id}.json"
        try:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(asdict(launch)))
            os.replace(tmp, path)
        except OSError as e:  # the launch still runs and is watched; only a restarted server would miss it
            log.warning("could not record driver %d in %s: %s", launch.pid, path, e)

    def wait_started(self, launch: Launch, run_exists: Any, grace: float | None = None) -> None:
        """Block until the driver's run exists, the driver exits, or ``grace`` seconds pass. A driver
        that exits with an error before its run exists raises DriverStartFailed with its log's tail."""
        deadline = time.monotonic() + (self.config.start_grace if grace is None else grace)
        exited = self._exited.get(launch.run_id)
        while True:
            if exited is not None:
                exited.wait(0.05)  # set by the reaper thread, the only one that waits on the process
            code = launch.exit_code
            if code is not None:
                if code != 0 and not run_exists(launch.run_id):
                    last = tail(launch.log_file, 2000).strip().splitlines()
                    why = next((ln.strip() for ln in reversed(last) if ln.strip()), "no output")
                    raise DriverStartFailed(f"the {launch.kind} driver (pid {launch.pid}) exited with code {code} "
                                            f"before its run started: {why} (log: {launch.log_file})")
                return
            if run_exists(launch.run_id) or time.monotonic() >= deadline:
                return
            if exited is None:
                time.sleep(0.05)

    def get(self, run_id: str) -> Launch | None:
        return self._launches.get(run_id)

    def of_source(self, source_run: str) -> list[Launch]:
        """Drivers started from ``source_run``, oldest first."""
        with self._lock:
            found = [x for x in self._launches.values() if x.source_run == source_run]
        return sorted(found, key=lambda x: x.started)
