"""Batched, asynchronous recording of state transitions (and the blobs they reference).

The engine appends; a writer thread drains every ``interval`` seconds and writes one batch per
transaction, blobs before the records that reference them. A failed write is retried with backoff
rather than dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any
from collections import deque

from gflow.artifacts import ArtifactStore
from gflow.errors import GflowError, StoreError
from gflow.store import Store, Transition

log = logging.getLogger("gflow.recorder")


#: batches at least this large start a writer process for a SQLite store (GFLOW_WRITER=thread: never,
#: GFLOW_WRITER=process: from the first batch)
PROCESS_WRITER_THRESHOLD = 2000


class Recorder:
    def __init__(self, store: Store, artifacts: ArtifactStore, *, interval: float = 0.05, max_batch: int = 20000):
        self.store = store
        mode = os.environ.get("GFLOW_WRITER", "auto")
        from gflow.store.sqlite import SQLiteStore

        self._writer_mode = mode if type(store) is SQLiteStore else "thread"
        self._writer: Any = None
        self.artifacts = artifacts
        self.interval = interval
        self.max_batch = max_batch
        self._items: deque[Transition] = deque()
        self._blobs: deque[tuple[str, bytes]] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self.enqueued = 0
        self.written = 0
        self.refused: list[Transition] = []
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="gflow-recorder", daemon=True)
        self._thread.start()

    def add(self, t: Transition) -> None:
        self._items.append(t)
        self.enqueued += 1

    def add_blob(self, digest: str, data: bytes) -> None:
        self._blobs.append((digest, data))

    def flush(self, timeout: float | None = 120.0) -> None:
        """Block until everything added so far is written; raise StoreError if it cannot be."""
        target = self.enqueued
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._cond:
            while self.written < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or not self._thread.is_alive():
                    raise StoreError(f"could not record state to {self.store.url}: {self.error}")
                self._cond.wait(min(0.5, remaining) if remaining is not None else 0.5)
                self._wake.set()

    def close(self, timeout: float | None = 120.0) -> None:
        try:
            self.flush(timeout)
        finally:
            self._closing = True
            self._wake.set()
            self._thread.join(timeout=5)

    def _run(self) -> None:
        items, blobs = self._items, self._blobs
        backoff = 0.1
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if not items and not blobs:
                if self._closing:
                    return
                continue
            batch_blobs = {}
            while blobs:
                d, data = blobs.popleft()
                batch_blobs[d] = data
            batch: list[Transition] = []
            while items and len(batch) < self.max_batch:
                batch.append(items.popleft())
            attempts = 0
            target = self._target(len(batch))
            while True:
                try:
                    if batch_blobs:
                        self.artifacts.put_many(batch_blobs)
                        batch_blobs = {}
                    refused = target.apply(batch)
                    break
                except Exception as e:  # keep the batch and retry: losing state is worse
                    self.error = e
                    attempts += 1
                    if not isinstance(e, (GflowError, OSError)) and attempts >= 3:
                        log.error("dropping %d transitions after an unexpected error: %r", len(batch), e)
                        refused = []
                        break
                    log.warning("state write failed (%s); retrying in %.1fs", e, backoff)
                    target = self._target(0)  # a dead writer process falls back to this thread
                    if self._closing:
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            backoff = 0.1
            self.error = None
            if refused:
                log.error("store refused %d backward transition(s), e.g. %s", len(refused), refused[0])
                self.refused.extend(refused)
            with self._cond:
                self.written += len(batch)
                self._cond.notify_all()
            if items:
                self._wake.set()

    def _target(self, batch_size: int) -> Any:
        """Where this batch goes: the writer process once it is ready, else the store in this thread."""
        mode = self._writer_mode
        if mode == "thread":
            return self.store
        if self._writer is None and (mode == "process" or batch_size >= PROCESS_WRITER_THRESHOLD):
            from gflow.store._writer import writer_for

            try:
                store: Any = self.store  # a SQLiteStore (checked in __init__)
                self._writer = writer_for(store.path, store.timeout)
                if mode == "process":
                    self._writer.wait_ready()
            except Exception:  # no child process: this thread writes, as before
                log.warning("could not start a writer process; recording in this process", exc_info=True)
                self._writer_mode = "thread"
                return self.store
        if self._writer is not None and self._writer.ready():
            return self._writer
        return self.store
