"""Live run events for subscriptions: one shared tail per watched run, fanned out to subscribers.

A subscriber first reads its backlog from the durable event log (``store.events(run_id, after)``),
then receives what the run's tail publishes, skipping what the backlog already had. The tail reads
the event log with an indexed ``after=seq`` query:

- every ``poll_interval`` (50 ms) on a store without push notifications;
- when the store has ``subscribe(run_id)`` (the Redis layer's pub/sub), each message wakes the tail
  for an immediate read, with a slow poll (``fallback_interval``) as a safety net, since pub/sub
  delivery is at-most-once. The events themselves always come from the durable log, so their
  ``seq`` is the log's and nothing is lost if a message is.

A stream ends after the run's own terminal event (the last event a run writes).

Back-pressure: each subscriber has an inbox of events not yet sent. When it holds more than
``coalesce_after`` events (the client reads slower than the run writes), it is coalesced: only the
latest event of each task run is kept (run-level events are all kept, in order), so a slow client
gets the current state of every task run, with gaps in ``seq``, and the inbox is bounded by the
run's number of task runs instead of growing with its event rate. Only when even that exceeds
``max_pending`` events is the subscriber dropped with :class:`SlowSubscriber`; it can resubscribe
with ``after`` = the last seq it saw.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gflow.server.loaders import last_event_seq
from gflow.store import Event, Store

log = logging.getLogger("gflow.server.events")

_END = None
_BATCH = 5000


class SlowSubscriber(Exception):
    """The subscriber did not keep up with the run's events."""


def is_run_end(e: Event) -> bool:
    return e.task_run_id is None and e.state.terminal


class _Inbox:
    """One subscriber's events not yet sent, coalesced to the latest event per task run when it grows."""

    __slots__ = ("items", "ready", "ended", "coalesced", "overflow", "coalesce_after", "max_pending")

    def __init__(self, coalesce_after: int, max_pending: int):
        self.items: list[Event] = []
        self.ready = asyncio.Event()
        self.ended = False
        self.coalesced = 0  # events dropped because a later one of the same task run superseded them
        self.overflow = False
        self.coalesce_after = coalesce_after
        self.max_pending = max_pending

    def put(self, events: list[Event] | None) -> None:
        if events is _END:
            self.ended = True
        else:
            self.items.extend(events)
            if len(self.items) > self.coalesce_after:
                self._coalesce()
        self.ready.set()

    def _coalesce(self) -> None:
        last: dict[str, int] = {}
        for i, e in enumerate(self.items):
            if e.task_run_id is not None:
                last[e.task_run_id] = i
        keep = [e for i, e in enumerate(self.items) if e.task_run_id is None or last[e.task_run_id] == i]
        self.coalesced += len(self.items) - len(keep)
        self.items = keep
        if len(keep) > self.max_pending:
            self.overflow = True
            self.items = []

    async def take(self) -> list[Event] | None:
        """What is pending, in seq order (waiting for some); None once the stream has ended and all is taken."""
        while not self.items and not self.ended and not self.overflow:
            self.ready.clear()
            await self.ready.wait()
        if self.items:
            await asyncio.sleep(0)  # let the loop serve others between batches, even when events keep coming
        out, self.items = self.items, []
        return out or None


class _Tail:
    def __init__(self, hub: EventHub, run_id: str):
        self.hub = hub
        self.run_id = run_id
        self.queues: set[_Inbox] = set()
        self.cursor = 0  # seq of the newest event published
        self.ready = asyncio.Event()  # set once the cursor is known
        self.wake = asyncio.Event()
        self.pubsub_stop: Callable[[], None] | None = None
        self.pushed = hub.pushes  # False once this tail's push stream fails: then it polls
        if hub.pushes:
            self._start_pubsub()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"gflow-tail-{run_id}")

    def _start_pubsub(self) -> None:
        """Bridge the store's blocking ``subscribe`` iterator into wake-ups of this tail."""
        loop = asyncio.get_running_loop()
        stopped = threading.Event()
        subscribe = self.hub.store.subscribe  # type: ignore[attr-defined]
        try:  # the Redis layer takes a stop event (and ends by itself after the run's terminal event)
            it = subscribe(self.run_id, stop=stopped)
        except TypeError:
            it = subscribe(self.run_id)

        def pump() -> None:
            try:
                for _ in it:
                    if stopped.is_set():
                        break
                    loop.call_soon_threadsafe(self.wake.set)
            except Exception as e:  # noqa: BLE001 - the slow poll still runs; say why pushes stopped
                if not stopped.is_set():
                    log.warning("event push for run %s stopped (%s); falling back to polling", self.run_id, e)
                    loop.call_soon_threadsafe(self._lost_pushes)

        def stop() -> None:
            stopped.set()
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass

        self.pubsub_stop = stop
        threading.Thread(target=pump, name=f"gflow-pubsub-{self.run_id}", daemon=True).start()

    def _lost_pushes(self) -> None:
        self.pushed = False
        self.wake.set()

    async def _run(self) -> None:
        hub = self.hub
        try:
            while not self.ready.is_set():
                try:
                    self.cursor = await hub.call(last_event_seq, hub.store, self.run_id)
                    self.ready.set()
                except Exception as e:  # noqa: BLE001 - store trouble: keep the subscribers, retry
                    log.warning("reading events of run %s failed (%s); retrying", self.run_id, e)
                    await asyncio.sleep(1.0)
            idle_reads = 0
            while self.queues:
                try:
                    events = await hub.call(hub.store.events, self.run_id, after=self.cursor, limit=_BATCH)
                except Exception as e:  # noqa: BLE001 - store trouble: keep the subscribers, retry
                    log.warning("reading events of run %s failed (%s); retrying", self.run_id, e)
                    await asyncio.sleep(1.0)
                    continue
                if events:
                    idle_reads = 0
                    self.cursor = events[-1].seq
                    self._publish(events)
                    if any(is_run_end(e) for e in events):
                        self._publish(_END)
                        return
                    if len(events) == _BATCH:
                        continue
                else:
                    idle_reads += 1
                if not self.pushed:
                    await asyncio.sleep(hub.poll_interval)
                elif idle_reads <= 3:
                    # a wake-up can arrive just before its write is visible: read again a few times quickly
                    await asyncio.sleep(0.02)
                else:
                    # then sleep until the next push, or the safety-net poll
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), hub.fallback_interval)
                    except TimeoutError:
                        pass
        finally:
            if hub._tails.get(self.run_id) is self:
                del hub._tails[self.run_id]
            if self.pubsub_stop:
                self.pubsub_stop()

    def _publish(self, item: list[Event] | None) -> None:
        for q in list(self.queues):
            q.put(item)
            if q.overflow:
                self.queues.discard(q)


class TooManySubscriptions(Exception):
    """A token (or an anonymous client address) already holds the most subscriptions allowed."""


class SubscriptionLimit:
    """Live subscriptions per client key (a token's digest, or ``addr:HOST`` for anonymous clients), in
    this server process; ``limit`` <= 0 means no limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        n = self.held.get(key, 0)
        if 0 < self.limit <= n:
            raise TooManySubscriptions(f"this token already holds {n} subscriptions (the limit is {self.limit}); "
                                       "close some, or follow several runs from one runEventBatches each")
        self.held[key] = n + 1

    def release(self, key: str) -> None:
        n = self.held.get(key, 0) - 1
        if n > 0:
            self.held[key] = n
        else:
            self.held.pop(key, None)


class EventHub:
    """The server's live event streams (one per watched run). Lives on the server's event loop."""

    def __init__(self, store: Store, call: Callable[..., Awaitable[Any]], *, poll_interval: float = 0.05,
                 fallback_interval: float = 1.0, coalesce_after: int = 5000, max_pending: int = 200_000,
                 max_queue: int | None = None):
        self.store = store
        self.call = call
        self.poll_interval = poll_interval
        self.fallback_interval = fallback_interval
        self.coalesce_after = coalesce_after if max_queue is None else max_queue  # max_queue: the old name
        self.max_pending = max_pending
        # a store that can push (the Redis layer's pub/sub, MongoDB change streams where the server has them)
        self.pushes = callable(getattr(store, "subscribe", None)) and bool(getattr(store, "can_subscribe", True))
        self._tails: dict[str, _Tail] = {}

    async def subscribe(self, run_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """Batches of the run's events with ``seq > after``, in order, until the run's terminal event."""
        tail = self._tails.get(run_id)
        if tail is None:
            tail = self._tails[run_id] = _Tail(self, run_id)
        q = _Inbox(self.coalesce_after, self.max_pending)
        # Join, wait until the tail knows where it starts, then read the backlog: every event is
        # either committed before the backlog read (so in it) or published by the tail after we
        # joined (so in our queue); the overlap is skipped by seq.
        tail.queues.add(q)
        try:
            await tail.ready.wait()
            last = after
            while True:
                backlog = await self.call(self.store.events, run_id, after=last, limit=_BATCH)
                if backlog:
                    last = backlog[-1].seq
                    yield backlog
                    if any(is_run_end(e) for e in backlog):
                        return
                if len(backlog) < _BATCH:
                    break
            while True:
                item = await q.take()
                if q.overflow:
                    raise SlowSubscriber(f"subscriber fell more than {self.max_pending} task-run states behind run "
                                         f"{run_id}; resubscribe with after={last}")
                if item is None:
                    return
                fresh = [e for e in item if e.seq > last]
                if fresh:
                    last = fresh[-1].seq
                    yield fresh
        finally:
            tail.queues.discard(q)

    @property
    def watched(self) -> int:
        return len(self._tails)

    async def close(self) -> None:
        for tail in list(self._tails.values()):
            tail.queues.clear()
            tail.task.cancel()
