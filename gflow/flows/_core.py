"""The scheduling core: dependency counting, readiness, concurrency limits, failure propagation.

It does no I/O and never sleeps: the engine feeds it events (a call was added, finished, failed)
and acts on what it returns (nodes to dispatch, nodes failed because an upstream failed). Time is
passed in, so retries and backoff are testable deterministically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from gflow.states import State

_SUCCEEDED, _CACHED, _FAILED, _CANCELLED = State.SUCCEEDED, State.CACHED, State.FAILED, State.CANCELLED
_PENDING, _RETRYING = State.PENDING, State.RETRYING


class Node:
    """One task call in a flow run (the engine hands it to users as a :class:`gflow.Future`)."""

    __slots__ = ("id", "run_id", "task", "arguments", "deps", "waiting", "dependents", "state", "attempt",
                 "value", "error", "exc", "key", "handle", "index", "started", "engine", "expand", "stash",
                 "__weakref__")

    def __init__(self, id: str, run_id: str, task: Any, arguments: Any, deps: Sequence[Node],
                 index: int | None = None):
        self.id = id
        self.run_id = run_id
        self.task = task
        #: bound arguments (a dict) until dispatched; for a map node, then its fan-out (a list of nodes)
        self.arguments: Any = arguments
        self.deps: Sequence[Node] = deps
        self.waiting = 0
        self.dependents: list[Node] | None = None
        self.state = State.PENDING
        self.attempt = 1
        self.value: Any = None
        self.error: Any = None
        self.exc: BaseException | None = None
        self.key: str | None = None
        self.handle: Any = None
        self.index = index
        self.started: float | None = None
        self.engine: Any = None
        self.expand: Any = None  # a map over a future: what to fan out once it resolves
        self.stash: Any = None  # a speculative call's outcome that arrived before its inputs were known


class Scheduler:
    """Tracks which nodes are waiting, ready, dispatched or finished."""

    def __init__(self) -> None:
        self.ready: deque[Node] = deque()
        self.held: dict[str, deque[Node]] = {}
        self.running: dict[str, int] = {}
        self.active_by_run: dict[str, int] = {}
        self.active = 0

    # events in ----------------------------------------------------------------------------------
    def add(self, nodes: Iterable[Node]) -> list[Node]:
        """Register new nodes. Returns those failed at once because a dependency already failed."""
        failed: list[Node] = []
        ready = self.ready
        by_run = self.active_by_run
        for node in nodes:
            self.active += 1
            by_run[node.run_id] = by_run.get(node.run_id, 0) + 1
            waiting = 0
            bad = None
            for dep in node.deps:
                st = dep.state
                if st is _SUCCEEDED or st is _CACHED:
                    continue
                if st is _FAILED or st is _CANCELLED:
                    bad = dep
                    break
                waiting += 1
                if dep.dependents is None:
                    dep.dependents = [node]
                else:
                    dep.dependents.append(node)
            if bad is not None:
                node.error = bad
                failed.append(node)
                failed.extend(self._finish(node, _CANCELLED if bad.state is _CANCELLED else _FAILED))
                continue
            node.waiting = waiting
            if waiting == 0:
                ready.append(node)
        return failed

    def pop_ready(self, capacity: int) -> list[Node]:
        """Up to ``capacity`` ready nodes, honouring each task's ``max_concurrency``."""
        out: list[Node] = []
        ready = self.ready
        running = self.running
        while ready and len(out) < capacity:
            node = ready.popleft()
            st = node.state
            if node.task is None or (st is not _PENDING and st is not _RETRYING and node.expand is None) \
                    or st.terminal:
                continue  # resolved outside the executor (a subflow), or cancelled while queued here
            limit = node.task.options.max_concurrency if node.task is not None else None
            if limit is not None:
                ident = node.task.identity
                n = running.get(ident, 0)
                if n >= limit:
                    self.held.setdefault(ident, deque()).append(node)
                    continue
                running[ident] = n + 1
            out.append(node)
        return out

    def release(self, node: Node) -> None:
        """A dispatched node stopped occupying its task's concurrency slot."""
        task = node.task
        if task is None or task.options.max_concurrency is None:
            return
        ident = task.identity
        self.running[ident] -= 1
        held = self.held.get(ident)
        if held:
            self.ready.appendleft(held.popleft())

    def rewait(self, node: Node, deps: Sequence[Node]) -> list[Node]:
        """Make a node that was popped wait again, on ``deps`` (a map node gathering its fan-out).

        Returns the nodes failed at once (the node itself and its dependents) if a dep already failed.
        """
        node.deps = deps
        waiting = 0
        for dep in deps:
            st = dep.state
            if st is _SUCCEEDED or st is _CACHED:
                continue
            if st is _FAILED or st is _CANCELLED:
                node.error = dep
                return [node, *self._finish(node, _CANCELLED if st is _CANCELLED else _FAILED)]
            waiting += 1
            if dep.dependents is None:
                dep.dependents = [node]
            else:
                dep.dependents.append(node)
        node.waiting = waiting
        if waiting == 0:
            self.ready.append(node)
        return []

    def requeue(self, node: Node) -> None:
        """A node waiting for a retry is ready again."""
        self.ready.append(node)

    def succeeded(self, node: Node, state: State = State.SUCCEEDED) -> list[Node]:
        """Mark success (or CACHED); returns nothing failed, releases dependents to ready."""
        return self._finish(node, state)

    def failed(self, node: Node, state: State = State.FAILED) -> list[Node]:
        """Mark failure (or CANCELLED); returns dependents failed as upstream-failed, transitively."""
        return self._finish(node, state)

    # internals ------------------------------------------------------------------------------
    def _finish(self, node: Node, state: State) -> list[Node]:
        failed: list[Node] = []
        stack = [(node, state)]
        ok = state is _SUCCEEDED or state is _CACHED
        while stack:
            n, st = stack.pop()
            if n.state.terminal:
                continue
            n.state = st
            self.active -= 1
            self.active_by_run[n.run_id] -= 1
            if n is not node:
                failed.append(n)
            deps = n.dependents
            n.dependents = None
            if not deps:
                continue
            if ok:
                for d in deps:
                    d.waiting -= 1
                    if d.waiting == 0 and (d.state is _PENDING or d.expand is not None):
                        self.ready.append(d)
            else:
                follow = State.CANCELLED if st is State.CANCELLED else State.FAILED
                for d in deps:
                    if not d.state.terminal:
                        d.error = n
                        stack.append((d, follow))
        return failed

    def idle(self, run_id: str | None = None) -> bool:
        if run_id is None:
            return self.active == 0
        return self.active_by_run.get(run_id, 0) == 0
