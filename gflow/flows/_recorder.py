"""Batched, asynchronous, ordered recording of state: task transitions, run records and the blobs they
reference.

The engine appends; a writer thread drains every ``interval`` seconds. Order is kept: blobs are written
before the transitions that reference them, and a run record (a subflow's creation, a run's terminal
state) is written only after every transition appended before it. A failed state write is retried
with backoff rather than dropped. A failed *blob* write (the artifact store is full or gone) is not
retried forever: the transitions that reference the missing blob are held back (their task runs stay
unfinished in the store, so a resume computes them again), everything else is still recorded, and
``on_lost`` tells the engine, which hands it to the scheduling core as an event (``ArtifactsLost``).

The recorder decides nothing about state: it writes what it is given. A *marker* (``add_marker``) is
called back once everything added before it is written; the engine uses one per ``Flush`` so that the
core learns, before it decides how a run ends, whether that run's results are stored and which
transitions were held back (``take_held_back``).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gflow.artifacts import ArtifactStore
from gflow.errors import ArtifactStoreError, ConfigError, GflowError, InvalidTransition, StoreError, StoreFull
from gflow.flows._events import RecordRun
from gflow.store import Store
from gflow.store.base import R_ID, R_RESULT_INLINE, R_RESULT_REF, R_STATE, Row

log = logging.getLogger("gflow.recorder")

#: batches at least this large move the SQL work to the store's writer process where it has one
#: (GFLOW_WRITER=thread: never, GFLOW_WRITER=process: from the first batch)
PROCESS_WRITER_THRESHOLD = 2000
#: ... or once this many rows were written in this thread: a long run of small batches (a chain of dependent
#: calls) then stops spending the driver's GIL on SQL; the process starts in the background meanwhile
PROCESS_WRITER_AFTER_ROWS = 1000
#: how long a failing blob write is retried before the blobs count as lost (a tenth of it for a full disk)
BLOB_RETRY_SECONDS = 5.0
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
#: how long state writes may keep failing (a full disk, a store gone) before the driver gives up on recording
#: and ends the run; ``GFLOW_STATE_RETRY_SECONDS`` sets it
STATE_RETRY_SECONDS = 60.0


def state_retry_seconds() -> float:
    """``GFLOW_STATE_RETRY_SECONDS``, else :data:`STATE_RETRY_SECONDS`.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    raw = os.environ.get("GFLOW_STATE_RETRY_SECONDS")
    if not raw:
        return STATE_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"GFLOW_STATE_RETRY_SECONDS={raw[:40]!r}: must be a positive number of seconds")
    return value


#: tries of a run record's creation before it counts as failed (reported by ``create_errors``), not retried forever
CREATE_TRIES = 5


class _Marker:
    """Called back from the writer thread once everything added before it is written."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn


class Recorder:
    """The engine's recorder; a context manager (``close`` flushes)."""

    def __init__(self, store: Store, artifacts: ArtifactStore, *, interval: float = 0.05, max_batch: int = 20000,
                 writer_mode: str | None = None, pending_hold: float = 0.5, clock: Any = time.monotonic,
                 state_retry: float | None = None, sleep: Any = time.sleep, on_state_error: Any = None,
                 on_lost: Callable[[ArtifactStoreError], None] | None = None):
        self.store = store
        self.artifacts = artifacts
        self.interval = interval
        self.pending_hold = pending_hold
        self.clock = clock
        self.on_lost = on_lost
        self.sleep = sleep
        #: seconds state writes may keep failing before the recorder gives up (:func:`state_retry_seconds`)
        self.state_retry = state_retry_seconds() if state_retry is None else state_retry
        #: set once state writes failed for ``state_retry`` seconds: later writes are tried once, then dropped
        self.state_error: StoreError | None = None
        #: transitions and run records that could not be written after that
        self.unrecorded = 0
        self._on_state_error = on_state_error
        self._failing_since: float | None = None
        self.max_batch = max_batch
        mode = writer_mode or os.environ.get("GFLOW_WRITER", "auto")
        self._writer_mode = mode if store.can_offload else "thread"
        self._writer: Any = None
        self._rows_applied = 0  # rows handed to _apply so far (a writer process takes over after enough)
        #: items in order: a list of Transitions, a dict of blobs, or a RecordRun
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self.enqueued = 0
        self.written = 0
        self.refused: list[Row] = []
        self.error: BaseException | None = None
        #: set when blobs could not be written: the run cannot keep its results
        self.artifact_error: ArtifactStoreError | None = None
        self.lost_blobs: set[str] = set()
        #: transitions not written because a blob they reference was lost (see ``take_held_back``)
        self.held_back: list[Row] = []
        #: run records whose creation failed, by run id (taken by the engine); later records of them are not written
        self.create_errors: dict[str, BaseException] = {}
        self._not_created: set[str] = set()
        #: PENDING rows waiting to be written with their call's next transition (``pending_hold``)
        self._held: dict[str, Row] = {}
        self._held_order: deque[tuple[float, str]] = deque()
        self._closing = False
        self._flushing = 0
        self._thread = threading.Thread(target=self._run, name="gflow-recorder", daemon=True)
        self._thread.start()

    # -- API (engine thread) ---------------------------------------------------------------------------
    def add_many(self, transitions: list[Row], blobs: dict[str, bytes] | None = None) -> None:
        if blobs:
            self._items.append(blobs)
            self.enqueued += 1
        if transitions:
            self._items.append(transitions)
            self.enqueued += 1

    def add_run(self, ins: RecordRun) -> None:
        if ins.blobs:
            self._items.append(ins.blobs)
            self.enqueued += 1
        self._items.append(ins)
        self.enqueued += 1
        self._wake.set()

    def add_marker(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (from the writer thread) once everything added so far is written (or given up on)."""
        self._items.append(_Marker(fn))
        self.enqueued += 1
        self._wake.set()

    def take_held_back(self) -> list[Row]:
        """The transitions held back since the last call (a blob they reference was lost)."""
        out, self.held_back = self.held_back, []
        return out

    def flush(self, timeout: float | None = 120.0) -> None:
        """Block until everything added so far is written; raise StoreError if it cannot be."""
        target = self.enqueued
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flushing += 1
        self._wake.set()
        try:
            with self._cond:
                while self.written < target or self._held:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if (remaining is not None and remaining <= 0) or not self._thread.is_alive():
                        raise StoreError(f"could not record state to {self.store.url}: {self.error}")
                    self._cond.wait(min(0.5, remaining) if remaining is not None else 0.5)
                    self._wake.set()
        finally:
            self._flushing -= 1

    def close(self, timeout: float | None = 120.0) -> None:
        try:
            self.flush(timeout)
        finally:
            self._closing = True
            self._wake.set()
            self._thread.join(timeout=5)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        items = self._items
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if not items and not self._held:
                if self._closing:
                    return
                continue
            while items or self._held:
                blobs: dict[str, bytes] = {}
                batch: list[Row] = []
                run_ins: RecordRun | _Marker | None = None
                n = 0
                while items and len(batch) < self.max_batch:
                    item = items[0]
                    if isinstance(item, (RecordRun, _Marker)):
                        if batch or blobs:
                            break  # write what comes before it first
                        run_ins = items.popleft()
                        n += 1
                        break
                    items.popleft()
                    n += 1
                    if isinstance(item, dict):
                        blobs.update(item)
                    else:
                        self._take(item, batch)
                if self._held:  # before a run record, at a flush, or once they waited long enough
                    final = run_ins is not None or self._flushing or self._closing
                    self._release(batch, None if final else self.clock() - self.pending_hold)
                if blobs:
                    self._write_blobs(blobs)
                if batch:
                    if self.lost_blobs:
                        batch = self._hold_back(batch)
                    self._apply(batch)
                if isinstance(run_ins, _Marker):
                    try:
                        run_ins.fn()
                    except Exception:  # noqa: BLE001 - a callback's failure must not stop recording
                        log.exception("a recorder marker failed")
                elif run_ins is not None:
                    self._apply_run(run_ins)
                with self._cond:
                    self.written += n
                    self._cond.notify_all()
                if not items:
                    break  # what is still held waits for its call's next transition, or its time
            if self._closing and not items and not self._held:
                return

    def _take(self, rows: list[Row], batch: list[Row]) -> None:
        """Add a Record's rows to the batch, holding PENDING ones back for up to ``pending_hold`` seconds: a call
        that moves on meanwhile is then written once (one row insert) instead of inserted and updated."""
        held = self._held
        hold = self.pending_hold > 0 and not self._flushing and not self._closing
        if not hold and not held:
            batch.extend(rows)
            return
        now = self.clock() if hold else 0.0
        order = self._held_order
        for r in rows:
            if hold and r[R_STATE] == "PENDING":
                held[r[R_ID]] = r
                order.append((now, r[R_ID]))
                continue
            if held:
                h = held.pop(r[R_ID], None)
                if h is not None:
                    batch.append(h)  # its PENDING first: per call, transitions stay in order
            batch.append(r)

    def _release(self, batch: list[Row], older_than: float | None) -> None:
        """Write held PENDING rows (all of them, or those held since before ``older_than``)."""
        order, held = self._held_order, self._held
        while order and (older_than is None or order[0][0] <= older_than):
            _, tid = order.popleft()
            h = held.pop(tid, None)
            if h is not None:
                batch.append(h)
        if not held:
            order.clear()

    def _write_blobs(self, blobs: dict[str, bytes]) -> None:
        start = time.monotonic()
        backoff = 0.05
        while True:
            try:
                self.artifacts.put_many(blobs)
                return
            except Exception as e:  # noqa: BLE001 - an artifact store failure must not stop state recording
                full = isinstance(e, OSError) and e.errno in _FULL
                limit = BLOB_RETRY_SECONDS / 10 if full else BLOB_RETRY_SECONDS
                if time.monotonic() - start >= limit or self._closing or self.artifact_error is not None:
                    # keep what fits: write one by one, and lose only the blobs that cannot be written
                    for d, data in blobs.items():
                        try:
                            if not self.artifacts.exists(d):
                                self.artifacts.put(data, d)
                        except Exception:  # noqa: BLE001
                            self.lost_blobs.add(d)
                    if self.artifact_error is None:
                        self.artifact_error = ArtifactStoreError(
                            f"could not write results to the artifact store {self.artifacts.url}: "
                            f"{type(e).__name__}: {e}")
                        log.error("%s", self.artifact_error)
                        if self.on_lost is not None:
                            self.on_lost(self.artifact_error)
                    return
                log.warning("artifact write to %s failed (%s); retrying", self.artifacts.url, e)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _hold_back(self, batch: list[Row]) -> list[Row]:
        """Drop transitions whose result blob was lost (their task runs stay unfinished in the store)."""
        lost = self.lost_blobs
        keep: list[Row] = []
        for t in batch:
            if t[R_RESULT_REF] is not None and _references(t, lost):
                self.held_back.append(t)
            else:
                keep.append(t)
        return keep

    def _apply(self, batch: list[Row]) -> None:
        backoff = 0.1
        attempts = 0
        self._rows_applied += len(batch)
        target = self._target(len(batch))
        while True:
            try:
                refused = [batch[i] for i in target.apply_rows(batch)]
                break
            except Exception as e:  # keep the batch and retry: losing state is worse
                self.error = e
                attempts += 1
                if not isinstance(e, (GflowError, OSError)) and attempts >= 3:
                    log.error("dropping %d transitions after an unexpected error: %r", len(batch), e)
                    refused = []
                    break
                if self._give_up(e, len(batch)):
                    return
                log.warning("state write failed (%s); retrying in %.1fs", e, backoff)
                target = self._target(0)  # a dead writer process falls back to this thread
                if self._closing and attempts > 50:
                    return
                self.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.error = None
        self._failing_since = None
        if refused:
            log.error("store refused %d backward transition(s), e.g. %s", len(refused), refused[0])
            self.refused.extend(refused)

    def _apply_run(self, ins: RecordRun) -> None:
        if ins.result_ref is not None and ins.result_inline is None and ins.result_ref in self.lost_blobs:
            ins.result_ref = None  # never claim a result that cannot be read
        if ins.run_id in self._not_created:
            return  # its record is someone else's (the id was taken): leave it alone
        backoff = 0.1
        tries = 0
        while True:
            try:
                if ins.create is not None:
                    self.store.create_run(ins.create)
                elif ins.state is not None:
                    self.store.set_run_state(ins.run_id, ins.state, ins.ts, error=ins.error, traceback=ins.traceback,
                                             result_ref=ins.result_ref, result_inline=ins.result_inline)
                    if ins.extra:
                        self.store.update_run(ins.run_id, extra={**self.store.get_run(ins.run_id).extra, **ins.extra})
                self._failing_since = None
                return
            except InvalidTransition as e:  # e.g. cancelled from outside first: that record stands
                log.info("run %s: %s", ins.run_id, e)
                return
            except Exception as e:  # noqa: BLE001 - retried like transitions
                self.error = e
                tries += 1
                give_up = self._closing or self._give_up(e, 1)
                if ins.create is not None and (give_up or tries >= CREATE_TRIES):
                    log.error("could not create the record of run %s: %s", ins.run_id, e)
                    self.create_errors[ins.run_id] = e
                    self._not_created.add(ins.run_id)
                    return
                if give_up:
                    return
                log.warning("run record write failed (%s); retrying in %.1fs", e, backoff)
                self.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _give_up(self, err: Exception, n: int) -> bool:
        """Whether to stop retrying a failed state write (``n`` rows): once writes have failed for ``state_retry``
        seconds (a full disk does not empty itself), and from then on at the first failure of each write. The
        rows are lost from the store; the engine ends the run (:attr:`state_error`), which a resume completes."""
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        if self.state_error is None and now - self._failing_since < self.state_retry:
            return False
        self.unrecorded += n
        if self.state_error is None:
            cls = StoreFull if isinstance(err, StoreFull) else StoreError
            self.state_error = cls(f"gave up recording state after {self.state_retry:g}s of failed writes "
                                   f"(GFLOW_STATE_RETRY_SECONDS): {err}")
            log.error("%s", self.state_error)
            if self._on_state_error is not None:
                self._on_state_error()
        return True

    def _target(self, batch_size: int) -> Any:
        """Where this batch goes: the store's writer process once it is ready, else the store in this thread."""
        mode = self._writer_mode
        if mode == "thread":
            return self.store
        if self._writer is None and (mode == "process" or batch_size >= PROCESS_WRITER_THRESHOLD
                                     or self._rows_applied >= PROCESS_WRITER_AFTER_ROWS):
            try:
                self._writer = self.store.offload_writer()
                if self._writer is not None and mode == "process":
                    self._writer.wait_ready()
            except Exception:  # noqa: BLE001 - no child process: this thread writes, as before
                log.warning("could not start a writer process; recording in this process", exc_info=True)
                self._writer_mode = "thread"
                return self.store
        if self._writer is not None and self._writer.ready():
            return self._writer
        return self.store


def _references(t: Row, lost: set[str]) -> bool:
    """Whether a transition's result needs one of the ``lost`` blobs (its own, or a typed blob it names)."""
    inline = t[R_RESULT_INLINE]
    if inline is None:
        return t[R_RESULT_REF] in lost
    return '"sha256:' in inline and any(d in inline for d in lost)
