"""RDKit canonical SMILES: in this process for small molecules, in a helper process for large ones.

RDKit's SMILES writer recurses once per atom of the longest path; on a chain of ~20,000 atoms it
overflows an 8 MiB stack and the process dies with SIGSEGV, and ring perception grows with the cube
of the ring closures (seconds at a few hundred). gflow bounds what reaches RDKit (``_limits``), and
canonicalizes a molecule past ``isolate_atoms`` in a helper process: a persistent child running this
file, whose RDKit thread has a 512 MiB stack. If RDKit crashes there or takes longer than the timeout,
the helper dies (or is killed) and the caller gets a ``ValueError`` saying so; the next large molecule
starts a new helper. So no SMILES, however it reached gflow (a ``--param``, a stored value), can take
the driver down.

This file imports nothing from gflow: the helper runs it as a script (``runpy.run_path``), without
importing the package.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from types import ModuleType
from typing import IO, Any

CANONICAL_PASSES = 4
HELPER_STACK = 512 * 1024 * 1024
STARTUP_TIMEOUT = 120.0
READY = b'"ready"'


def rdkit_error(chem: ModuleType, smiles: str) -> str:
    """Why RDKit refuses ``smiles``: its syntax error, or the sanitization (valence, aromaticity) problem."""
    from rdkit import rdBase  # type: ignore[import-not-found, unused-ignore]

    with rdBase.BlockLogs():
        raw = chem.MolFromSmiles(smiles, sanitize=False)
        if raw is None:
            return "RDKit could not parse it"
        try:
            chem.SanitizeMol(raw)
        except Exception as exc:  # noqa: BLE001 - RDKit raises its own exception types
            return f"RDKit: {str(exc).strip() or type(exc).__name__}"
    return "RDKit could not parse it"


def canonical(chem: ModuleType, smiles: str) -> str:
    """RDKit's canonical SMILES, iterated to a fixed point, in this process.

    Raises:
        ValueError: If RDKit cannot parse or sanitize it, saying why.
    """
    from rdkit import rdBase  # type: ignore[import-not-found, unused-ignore]

    with rdBase.BlockLogs():
        mol = chem.MolFromSmiles(smiles)
        if mol is None:
            raise ValueError(rdkit_error(chem, smiles))
        current = chem.MolToSmiles(mol)
        for _ in range(CANONICAL_PASSES):  # RDKit's output is canonical, but rarely not a fixed point
            again = chem.MolFromSmiles(current)
            if again is None:
                break
            following = chem.MolToSmiles(again)
            if following == current:
                break
            current = following
    return str(current)


class _Helper:
    """One helper process per gflow process (a forked child starts its own), used under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending = b""

    def forget(self) -> None:
        """Drops the helper and the lock without touching them (in a forked child, they are the parent's)."""
        self.lock, self.proc, self.pending = threading.Lock(), None, b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        boot = ("import runpy, sys; sys.path[:] = [p for p in sys.path if p]; "
                f"runpy.run_path({__file__!r}, run_name='__main__')")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, env=env, close_fds=True)
        except OSError as exc:
            raise ValueError(f"gflow's helper process for RDKit could not start ({exc}); refused") from None
        self.pending = b""
        assert self.proc.stdout is not None
        # importing RDKit is not the molecule's time: wait for it apart (generously: a loaded host)
        if self._read_line(self.proc.stdout, time.monotonic() + STARTUP_TIMEOUT) != READY:
            raise ValueError(f"gflow's helper process for RDKit could not start ({_describe(self._stop())}); refused")
        return self.proc

    def _stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def canonical(self, smiles: str, timeout: float) -> str:
        """The canonical SMILES computed by the helper.

        Raises:
            ValueError: RDKit refused it, crashed on it (named by its signal) or took longer than ``timeout``.
        """
        with self.lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(smiles).encode() + b"\n")
                proc.stdin.flush()
                line = self._read_line(proc.stdout, time.monotonic() + timeout)
            except BrokenPipeError:
                line = b""
            if line is None:
                self._stop()
                raise ValueError(f"RDKit took longer than {timeout:g} s on it (GFLOW_SMILES_TIMEOUT); refused")
            if not line:
                code = self._stop()
                raise ValueError(f"RDKit crashed on it ({_describe(code)}, in gflow's helper process); refused")
            try:
                answer = json.loads(line)
            except ValueError:
                answer = None
            if not isinstance(answer, dict) or not isinstance(answer.get("smiles", answer.get("error")), str):
                self._stop()
                raise ValueError(f"gflow's helper process for RDKit answered {line[:80]!r}; refused")
        if "error" in answer:
            raise ValueError(str(answer["error"]))
        return str(answer["smiles"])

    def _read_line(self, stream: IO[bytes], deadline: float) -> bytes | None:
        """One line from the helper; ``b""`` if it died, None past ``deadline``."""
        fd = stream.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


_HELPER = _Helper()
atexit.register(_HELPER._stop)
# a forked child starts afresh: the parent's helper and lock (perhaps held by a thread that is not in
# the child) are the parent's
os.register_at_fork(after_in_child=_HELPER.forget)


def isolated_canonical(smiles: str, timeout: float) -> str:
    """:func:`canonical` in the helper process (see the module docstring)."""
    return _HELPER.canonical(smiles, timeout)


def _serve() -> None:
    """The helper's loop: a JSON string per line in, ``{"smiles": ...}`` or ``{"error": ...}`` per line out."""
    from rdkit import Chem  # type: ignore[import-not-found, unused-ignore]

    def answer(text: str) -> dict[str, Any]:
        try:
            return {"smiles": canonical(Chem, text)}
        except ValueError as exc:
            return {"error": str(exc)}

    def loop() -> None:
        sys.stdout.write(READY.decode() + "\n")
        sys.stdout.flush()
        for raw in sys.stdin.buffer:
            sys.stdout.write(json.dumps(answer(json.loads(raw))) + "\n")
            sys.stdout.flush()

    threading.stack_size(HELPER_STACK)  # RDKit recurses per atom: the limits can be raised past 8 MiB
    worker = threading.Thread(target=loop, name="gflow-smiles")
    worker.start()
    worker.join()


if __name__ == "__main__":
    _serve()
