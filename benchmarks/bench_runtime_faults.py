"""Figures for issue 16's runtime faults (docs/RELIABILITY.md, "Runtime faults found by probing").

    python benchmarks/bench_runtime_faults.py [--trials 5]

- **413 on a chunked body**: a client sends an endless chunked body to the real server (uvicorn, h11 and
  httptools) with a 64 KiB limit, as fast as loopback takes it, for 3 s; reported: the bytes the server
  accepted after its 413, and when the connection closed. The baseline is the same server answering the 413
  without ``Connection: close`` (``gflow.server.app._CLOSE`` emptied, in this process).
- **A driver killed while its pool worker holds the GIL** (``sum(range(10**12))``, one C call): how long the
  worker outlives the driver's SIGKILL (median of the trials; the cap is 10 s).
- **A full state disk** (a real 400 KiB tmpfs, root only): how long ``gflow run`` of a 3,000-call map takes to
  end FAILED with ``GFLOW_STATE_RETRY_SECONDS=2`` and with the default (60 s).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def flood(base: str, seconds: float = 3.0) -> tuple[int, float | None]:
    """(bytes sent after the 413 arrived, seconds from the 413 to the close or None if still open)."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 262144
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    s.setblocking(False)
    answered: float | None = None
    after = 0
    closed: float | None = None
    answer = b""
    t0 = time.monotonic()
    pending = memoryview(frame)
    try:
        while time.monotonic() - t0 < seconds:
            try:
                n = s.send(pending)  # whole chunks, in order: a torn frame would be a protocol error
                pending = pending[n:] if n < len(pending) else memoryview(frame)
                if answered is not None:
                    after += n
            except BlockingIOError:
                pass
            try:
                got = s.recv(65536)
                if not got:
                    closed = time.monotonic()
                    break
                answer += got
                if answered is None and b"\r\n\r\n" in answer:
                    answered = time.monotonic()
            except BlockingIOError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        closed = time.monotonic()
    s.close()
    if closed is None:
        return after, None
    return after, closed - (answered or closed)  # a reset can arrive before the 413 was read: closed at once


def bench_413() -> list[str]:
    import gflow.server.app as app_mod
    from gflow.server.app import create_app
    from gflow.server.schema import Limits
    from gflow.server.testing import serve
    from gflow.store import open_store

    rows = []
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/gflow.db"
        for http in ("h11", "httptools"):
            for label, close in (("before (no Connection: close)", {}), ("now", {"Connection": "close"})):
                app_mod._CLOSE = close
                with serve(create_app(open_store(url), close_store=True, limits=Limits(max_body_bytes=65536)),
                           http=http) as base:
                    after, closed = flood(base)
                rows.append(f"| {http} | {label} | {after / 1e6:,.1f} MB | "
                            f"{'open after 3 s' if closed is None else f'{closed * 1000:.0f} ms'} |")
        app_mod._CLOSE = {"Connection": "close"}
    return rows


def bench_gil(trials: int) -> str:
    lives = []
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "bench_gil_flow.py").write_text(textwrap.dedent("""
            import os
            import gflow

            @gflow.task
            def hog(folder: str) -> int:
                open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
                return sum(range(10 ** 12))

            @gflow.flow
            def hogs(folder: str) -> int:
                return hog(folder)
        """))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([d, str(ROOT)]), "GFLOW_HOME": f"{d}/home"}
        for t in range(trials):
            work = Path(d) / f"t{t}"
            work.mkdir()
            drv = subprocess.Popen([sys.executable, "-m", "gflow", "run", f"{d}/bench_gil_flow.py:hogs", "-p",
                                    f"folder={work}", "-e", "local://processes?workers=1", "--no-progress"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not list(work.glob("pid-*")):
                time.sleep(0.02)
            pid = int(next(work.glob("pid-*")).name.split("-")[1])
            time.sleep(0.3)
            drv.kill()
            drv.wait()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10 and Path(f"/proc/{pid}").exists() and \
                    Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                time.sleep(0.005)
            lives.append(time.monotonic() - t0)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return (f"worker outlived the driver: median {statistics.median(lives) * 1000:.0f} ms, "
            f"max {max(lives) * 1000:.0f} ms ({trials} trials)")


def bench_full_state_disk() -> list[str]:
    if os.geteuid() != 0:
        return ["(not root: no tmpfs)"]
    out = []
    for bound in ("2", None):
        with tempfile.TemporaryDirectory() as d:
            mnt = Path(d) / "state"
            mnt.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], check=True)
            try:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "resources"), str(ROOT)]),
                       "GFLOW_HOME": f"{d}/home", "GFLOW_STORE": f"sqlite:///{mnt}/gflow.db"}
                env.pop("GFLOW_STATE_RETRY_SECONDS", None)
                if bound:
                    env["GFLOW_STATE_RETRY_SECONDS"] = bound
                t0 = time.monotonic()
                r = subprocess.run([sys.executable, "-m", "gflow", "run",
                                    f"{ROOT}/tests/resources/flows_basic.py:map_reduce", "-p", "n=3000",
                                    "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
                took = time.monotonic() - t0
                last = r.stderr.strip().splitlines()[-1][:90]
                out.append(f"| {bound or 'default (60)'} | exit {r.returncode} after {took:.1f} s | `{last}...` |")
            finally:
                subprocess.run(["umount", "-l", str(mnt)], check=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    a = ap.parse_args()
    print("| protocol | server | accepted after the 413 (3 s) | closed after the 413 |\n|---|---|---|---|")
    print("\n".join(bench_413()))
    print()
    print(bench_gil(a.trials))
    print()
    print("| GFLOW_STATE_RETRY_SECONDS | driver | last line |\n|---|---|---|")
    print("\n".join(bench_full_state_disk()))


if __name__ == "__main__":
    main()
