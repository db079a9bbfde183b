"""The engine: the I/O shell around the scheduling core.

One engine thread owns all scheduling state. Flow bodies (any thread) and executors (through their
listener) talk to it only by putting messages on its queue; it resolves arguments, computes cache
keys, consults the cache, hands ready calls to the executor in batches, applies retries and
timeouts, resolves futures and hands every transition to the recorder.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import queue
import threading
import time
import traceback as tb_mod
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from gflow.errors import Cancelled, GflowError, SerializationError, TaskFailed, TaskTimeout, UpstreamFailed
from gflow.executors.base import UPSTREAM_PENDING, Call, Executor, Outcome, Ref
from gflow.flows._core import Node, Scheduler
from gflow.flows._future import Future, resolve
from gflow.flows._recorder import Recorder
from gflow.serialization import _dumps, decode, encode, to_jsonable
from gflow.states import State

PENDING, QUEUED, RUNNING, RETRYING = State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, FAILED, CANCELLED, CACHED = State.SUCCEEDED, State.FAILED, State.CANCELLED, State.CACHED
_TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, CACHED})
from gflow.store import Store, TaskRunRecord, Transition

log = logging.getLogger("gflow.engine")
INLINE_MAX = 16 * 1024


def _value_of(f: Future) -> Any:
    return f.value


def object_ids(value: Any, out: list[str] | None = None, depth: int = 0) -> list[str]:
    """Content ids of the gflow objects in ``value`` (itself, or inside lists/tuples/dicts, 3 levels)."""
    if out is None:
        out = []
    t = type(value)
    if t in _SCALARS or depth > 3:
        return out
    cid = getattr(value, "content_id", None) if isinstance(value, BaseModel) else None
    if isinstance(cid, str):
        if cid not in out:
            out.append(cid)
        return out
    if t is list or t is tuple:
        for v in value:
            if type(v) not in _SCALARS:
                object_ids(v, out, depth + 1)
    elif t is dict:
        for v in value.values():
            if type(v) not in _SCALARS:
                object_ids(v, out, depth + 1)
    return out


_SCALARS = frozenset({int, float, str, bool, bytes, type(None)})


def compute_key(task: Any, arguments: dict[str, Any]) -> str:
    """Cache key: sha256 of task identity, version and the canonical form of the arguments.

    Raises:
        SerializationError: naming the task and the argument that has no canonical form.
    """
    blobs: dict[str, bytes] = {}
    allow = task.options.pickle
    tree = {k: to_jsonable(v, blobs, allow, f"task '{task.name}' argument '{k}'") for k, v in arguments.items()}
    return hashlib.sha256(_dumps([task.identity, task.version, tree]).encode()).hexdigest()


class Engine:
    """Runs the calls of one top-level flow run (and its subflows)."""

    def __init__(self, executor: Executor, store: Store, artifacts: Any, *,
                 resume_results: dict[str, TaskRunRecord] | None = None):
        self.executor = executor
        self.store = store
        self.artifacts = artifacts
        self.recorder = Recorder(store, artifacts)
        self.core = Scheduler()
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.nodes: dict[str, Node] = {}
        self.resume_results = resume_results or {}
        self.cache_mem: dict[str, Any] = {}
        self.failures: list[Node] = []
        self._timers: list[tuple[float, int, str, Node, int]] = []
        self._seq = itertools.count()
        self._drains: list[tuple[str | None, threading.Event]] = []
        self._polled: dict[str, Node] = {}
        self._last_poll = 0.0
        self._cond = threading.Condition()
        self._waiters = 0
        self._stopped = False
        self._crashed: BaseException | None = None
        caps = executor.capabilities
        self.reports_start = caps.reports_start
        self.speculate = caps.accepts_refs and not self.resume_results
        self._board: Any = executor if caps.start_poll_interval else None
        self._board_interval = caps.start_poll_interval or 0.02
        self._last_board = 0.0
        self._awaiting_start = 0  # dispatched calls whose start the board has not shown yet
        #: the run whose state the engine watches for a cancel from outside (gflow runs cancel, the server)
        self.watch: str | None = None
        self.watch_interval = 1.0
        self.cancelled_by: str | None = None
        self._last_watch = time.monotonic()
        executor.attach_artifacts(artifacts)
        executor.start(self._listen)
        self._thread = threading.Thread(target=self._loop, name="gflow-engine", daemon=True)
        self._thread.start()

    # -- API for flow threads -----------------------------------------------------------------
    def add(self, nodes: Sequence[Node]) -> None:
        self.q.put(("add", nodes))

    def wait(self, node: Node, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while not node.state.terminal:
                    if self._crashed is not None:
                        raise GflowError(f"the gflow engine crashed: {self._crashed!r}") from self._crashed
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"{node!r} did not finish within {timeout}s")
                    self._cond.wait(remaining if remaining is not None else 1.0)
            finally:
                self._waiters -= 1

    def drain(self, run_id: str | None = None) -> None:
        """Block until every call of ``run_id`` (or of all runs) is finished."""
        ev = threading.Event()
        self.q.put(("drain", run_id, ev))
        while not ev.wait(0.5):
            if self._crashed is not None:
                raise GflowError(f"the gflow engine crashed: {self._crashed!r}") from self._crashed

    def cancel(self, run_id: str | None = None, reason: str = "cancelled") -> None:
        """Cancel every unfinished call (of ``run_id``, or all) and wait until that is recorded."""
        ev = threading.Event()
        self.q.put(("cancel", run_id, reason, ev))
        ev.wait(30)

    def finish_external(self, node: Node, ok: bool, value: Any = None, exc: BaseException | None = None,
                        tb: str = "") -> None:
        """Resolve a node that ran outside the executor (a subflow)."""
        self.q.put(("external", node, ok, value, exc, tb))

    def stop(self) -> None:
        self._stopped = True
        self.q.put(("stop",))
        self._thread.join(timeout=10)

    def error_of(self, node: Node) -> BaseException:
        """The exception ``future.result()`` raises for a failed or cancelled node."""
        err = node.error
        if isinstance(err, BaseException):
            return err
        if isinstance(err, Node):  # upstream failure: name the root cause
            root = err
            while isinstance(root.error, Node):
                root = root.error
            cause = root.error if isinstance(root.error, BaseException) else None
            name = node.task.name if node.task is not None else "subflow"
            up = root.task.name if root.task is not None else "subflow"
            if node.state is State.CANCELLED:
                return Cancelled(f"task '{name}' ({node.id}) was cancelled")
            e = UpstreamFailed(name, task_run_id=node.id, run_id=node.run_id, error_type="UpstreamFailed",
                               error_message=f"upstream task '{up}' ({root.id}) failed",
                               traceback=getattr(cause, "traceback", ""), attempts=0)
            e.__cause__ = cause
            return e
        return Cancelled(f"{node!r} was cancelled")

    # -- executor listener (any thread) --------------------------------------------------------
    def _listen(self, kind: str, call_id: str, attempt: int, payload: Any) -> None:
        self.q.put((kind, call_id, attempt, payload))

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        q = self.q
        try:
            while True:
                timeout = self._next_timeout()
                try:
                    msg = q.get(timeout=timeout) if timeout is None or timeout > 0 else q.get_nowait()
                except queue.Empty:
                    msg = None
                n = 0
                while msg is not None:
                    if msg[0] == "stop":
                        return
                    self._handle(msg)
                    n += 1
                    if n >= 2000:
                        break
                    try:
                        msg = q.get_nowait()
                    except queue.Empty:
                        msg = None
                if self._timers:
                    self._fire_timers()
                if self._polled:
                    self._poll()
                if self._awaiting_start:
                    self._read_board()
                if self.watch is not None and time.monotonic() - self._last_watch >= self.watch_interval:
                    self._check_cancelled()
                self._dispatch()
                if self._drains:
                    self._check_drains()
                if self._waiters:
                    with self._cond:
                        self._cond.notify_all()
        except BaseException as e:  # a bug in the engine must not hang the user's flow
            log.exception("gflow engine crashed")
            self._crashed = e
            with self._cond:
                self._cond.notify_all()
            for _, ev in self._drains:
                ev.set()

    def _next_timeout(self) -> float | None:
        t = None
        if self._timers:
            t = max(0.0, self._timers[0][0] - time.time())
        if self._polled:
            p = max(0.0, self._last_poll + self.executor.capabilities.poll_interval - time.monotonic())
            t = p if t is None else min(t, p)
        if self._awaiting_start:
            b = max(0.0, self._last_board + self._board_interval - time.monotonic())
            t = b if t is None else min(t, b)
        if self.watch is not None and self.cancelled_by is None:
            w = max(0.0, self._last_watch + self.watch_interval - time.monotonic())
            t = w if t is None else min(t, w)
        if self.core.ready and self.executor.capacity() <= 0:
            t = 0.05 if t is None else min(t, 0.05)
        return t

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "started":
            node = self.nodes.get(msg[1])
            if node is not None and node.attempt == msg[2]:
                if node.state is PENDING and node.handle is not None:  # a speculative call started
                    self._record(node, QUEUED)
                    node.state = QUEUED
                if node.state is QUEUED:
                    self._started(node, msg[3])
        elif kind == "done":
            node = self.nodes.get(msg[1])
            if node is None or node.attempt != msg[2] or node.state in _TERMINAL or node.state is RETRYING:
                return  # stale: a timed-out or cancelled attempt finishing late
            if node.handle is None and node.state is PENDING:
                return  # a speculative attempt already given up
            self._done(node, msg[3])
        elif kind == "add":
            self._add(msg[1])
        elif kind == "drain":
            self._drains.append((msg[1], msg[2]))
        elif kind == "cancel":
            self._cancel(msg[1], msg[2])
            msg[3].set()
        elif kind == "external":
            _, node, ok, value, exc, tb = msg
            if node.state.terminal:
                return
            if ok:
                node.value = value
                self.core.succeeded(node)
            else:
                node.exc = exc
                node.error = exc if isinstance(exc, TaskFailed) else TaskFailed(
                    f"subflow {node.id}", task_run_id=node.id, run_id=node.run_id,
                    error_type=type(exc).__name__, error_message=str(exc), traceback=tb)
                if not isinstance(exc, TaskFailed) and exc is not None:
                    node.error.__cause__ = exc
                self.failures.append(node)
                for f in self.core.failed(node):
                    self._record_upstream_failed(f)

    # -- transitions ------------------------------------------------------------------------------
    def _record(self, node: Node, state: State, **fields: Any) -> None:
        self.recorder.add(Transition(node.id, node.run_id, state, node.attempt, time.time(), **fields))

    def snapshot(self) -> dict[str, Counter[str]]:
        """Live counts of task runs by task name and state (for progress displays; any thread)."""
        out: dict[str, Counter[str]] = {}
        for node in list(self.nodes.values()):
            if node.task is not None:
                c = out.get(node.task.name)
                if c is None:
                    c = out[node.task.name] = Counter()
                c[node.state.value] += 1
        return out

    def _add(self, nodes: Sequence[Node]) -> None:
        reg = self.nodes
        rec = self.recorder.add
        now = time.time()
        for n in nodes:
            reg[n.id] = n
            task = n.task
            if task is None:
                continue
            rec(Transition(n.id, n.run_id, PENDING, 1, now, task=task.identity, name=task.name, key=n.key,
                           upstream=[d.id for d in n.deps] if n.deps else None, map_index=n.index,
                           cacheable=1 if task.options.cache else 0))
        for f in self.core.add(nodes):
            self._record_upstream_failed(f)

    def _record_upstream_failed(self, node: Node) -> None:
        if node.task is None:
            return
        if node.handle is not None:  # a speculative call in flight: its input will never come
            try:
                self.executor.cancel([node.handle])
            except Exception:
                log.debug("cancel of %s failed", node.id, exc_info=True)
        root = node.error
        if node.state is State.CANCELLED:
            msg = f"Cancelled: upstream {root.id} was cancelled" if isinstance(root, Node) else "Cancelled"
        else:
            msg = f"UpstreamFailed: upstream task run {root.id} failed" if isinstance(root, Node) else "UpstreamFailed"
        self._record(node, node.state, error=msg)
        node.arguments = None

    def _dispatch(self) -> None:
        core = self.core
        ex = self.executor
        while core.ready:
            cap = ex.capacity()
            if cap <= 0:
                return
            nodes = core.pop_ready(min(cap, 10000))
            if not nodes:
                return
            calls = []
            for node in nodes:
                if node.expand is not None:
                    self._expand(node)
                    continue
                if node.handle is not None and node.state is not RETRYING:  # dispatched speculatively
                    if node.stash is not None:
                        out, node.stash = node.stash, None
                        self._done(node, out)
                    continue
                call = self._prepare(node)
                if call is not None:
                    calls.append(call)
            if not calls:
                continue
            try:
                handles = ex.submit(calls)
            except Exception as e:  # translate: the backend refused the batch
                tb = tb_mod.format_exc()
                for c in calls:
                    node = self.nodes[c.id]
                    self._done(node, Outcome.from_exception(e, tb, None, time.time()))
                continue
            polled = not ex.capabilities.pushes_events
            if self._board is not None:
                self._awaiting_start += len(calls)
            dispatched = []
            for c, h in zip(calls, handles):
                node = self.nodes[c.id]
                node.handle = h
                dispatched.append(node)
                if polled:
                    self._polled[node.id] = node
            if self.speculate:
                self._speculate(dispatched)

    def _prepare(self, node: Node) -> Call | None:
        """Resolve arguments, compute the key, consult cache/resume; return a Call or None."""
        task = node.task
        args = node.arguments
        try:
            if node.deps:
                args = {k: resolve(v, _value_of) for k, v in args.items()}
                args = task.validator.validate(args)
            if node.key is None:
                node.key = compute_key(task, args)
        except (GflowError, TypeError, ValueError) as e:
            self._fail(node, Outcome.from_exception(e, tb_mod.format_exc(), None, time.time()), retryable=False)
            return None
        key = node.key
        hit = self.resume_results.get(key)
        if hit is None and task.options.cache:
            hit = self.cache_mem.get(key) or self.store.find_cached(key)
        if hit is not None:
            try:
                value = hit if not isinstance(hit, TaskRunRecord) else self._load_result(hit)
            except GflowError as e:
                log.warning("cached result for %s unreadable (%s); recomputing", task.name, e)
            else:
                node.value = value
                ref = hit.result_ref if isinstance(hit, TaskRunRecord) else None
                self._record(node, State.CACHED, key=key, result_ref=ref, objects=object_ids(value) or None,
                             message=f"from {hit.id}" if isinstance(hit, TaskRunRecord) else "from this run")
                self.core.succeeded(node, State.CACHED)
                node.arguments = None
                return None
        call_args, call_kwargs = task.validator.call_args(args)
        self._record(node, QUEUED, key=key, objects=object_ids(args) or None)
        node.state = QUEUED
        if not self.reports_start and task.options.timeout:
            self._arm_timeout(node, time.time())
        return Call(node.id, node.run_id, task, call_args, call_kwargs, node.attempt, key, node.index)

    def _expand(self, node: Node) -> None:
        """A map over futures: fan out once they resolved, then gather the results into a list."""
        children = node.arguments
        if children is None:  # phase 1: the iterables are known now
            flowrun, task, iterables, common = node.expand
            try:
                values = [resolve(it, _value_of) for it in iterables]
                rows = list(zip(*values, strict=True)) if len(values) > 1 else [(x,) for x in values[0]]
                children = [flowrun._node(task, row, common, i) for i, row in enumerate(rows)]
            except Exception as e:  # not iterable, mismatched lengths, invalid arguments
                self._fail(node, Outcome.from_exception(e, tb_mod.format_exc(), None, time.time()), retryable=False)
                return
            self._record(node, RUNNING, message=f"fan-out of {len(children)} calls of '{task.name}'")
            node.state = RUNNING
            node.arguments = children
            self._add(children)
            for f in self.core.rewait(node, children):
                self._record_upstream_failed(f)
            return
        node.value = [c.value for c in children]  # phase 2: every call finished
        self._record(node, SUCCEEDED)
        self.core.succeeded(node)
        node.arguments = None

    def _speculate(self, dispatched: list[Node]) -> None:
        """Start dependents of just-dispatched calls at once, with ``Ref``s to their inputs, on an
        executor that resolves them itself (Dask): a dependent chain then runs at the backend's speed,
        not one driver round-trip per link. Cached, concurrency-limited, resumed and timed-out tasks,
        and maps, take the ordinary path."""
        ex = self.executor
        stack = list(dispatched)
        while stack:
            cap = ex.capacity()
            if cap <= 0:
                return
            calls: list[Call] = []
            nodes: list[Node] = []
            seen: set[str] = set()
            for n in stack:
                for d in n.dependents or ():
                    if len(calls) >= cap:
                        break
                    if d.id in seen:
                        continue
                    seen.add(d.id)
                    call = self._speculative_call(d)
                    if call is not None:
                        calls.append(call)
                        nodes.append(d)
            stack = []
            if not calls:
                return
            try:
                handles = ex.submit(calls)
            except Exception:
                log.debug("speculative submit failed; those calls take the ordinary path", exc_info=True)
                return
            for node, h in zip(nodes, handles):
                node.handle = h
                stack.append(node)

    def _speculative_call(self, node: Node) -> Call | None:
        task = node.task
        if (node.state is not PENDING or node.handle is not None or node.expand is not None or task is None
                or node.arguments is None):
            return None
        opts = task.options
        if opts.cache or opts.max_concurrency is not None or opts.timeout is not None:
            return None
        refs: dict[str, Any] = {}
        for dep in node.deps:
            st = dep.state
            if st is SUCCEEDED or st is CACHED:
                continue
            if (st is QUEUED or st is RUNNING or (st is PENDING and dep.handle is not None)) \
                    and dep.handle is not None and dep.task is not None and dep.expand is None:
                refs[dep.id] = dep.handle
                continue
            return None

        def placeholder(f: Any) -> Any:
            return Ref(f.id) if f.id in refs else f.value

        try:
            args = {k: resolve(v, placeholder) for k, v in node.arguments.items()}
        except Exception:
            return None
        call_args, call_kwargs = task.validator.call_args(args)
        return Call(node.id, node.run_id, task, call_args, call_kwargs, node.attempt, None, node.index, refs=refs)

    def _unspeculate(self, node: Node) -> None:
        """A speculative attempt could not get its inputs: run it the ordinary way when they are known."""
        node.handle = None
        node.stash = None
        if node.waiting == 0 and all(d.state is SUCCEEDED or d.state is CACHED for d in node.deps):
            self.core.ready.append(node)

    def _load_result(self, rec: TaskRunRecord) -> Any:
        data = rec.result_inline if rec.result_inline is not None else self.artifacts.get(rec.result_ref)
        return decode(data, self.artifacts.get)

    def _started(self, node: Node, ts: float) -> None:
        if self._board is not None:
            self._awaiting_start -= 1
        self._record(node, RUNNING, handle=self.executor.describe_handle(node.handle)
                     if node.handle is not None else None)
        node.state = RUNNING
        node.started = ts
        if node.task.options.timeout and self.reports_start:
            self._arm_timeout(node, ts)

    def _arm_timeout(self, node: Node, start: float) -> None:
        heapq.heappush(self._timers, (start + node.task.options.timeout, next(self._seq), "timeout", node,
                                      node.attempt))

    def _done(self, node: Node, out: Outcome) -> None:
        if node.state is PENDING:  # a speculative call
            if not out.ok and out.error_type == UPSTREAM_PENDING:
                self._unspeculate(node)
                return
            if node.waiting > 0:  # its inputs' own outcomes have not reached the engine yet
                node.stash = out
                return
            self._record(node, QUEUED)
            node.state = QUEUED
        self._polled.pop(node.id, None)
        if node.state is QUEUED:
            self._started(node, out.started or time.time())
        self.core.release(node)
        if out.ok:
            self._succeed(node, out)
        else:
            self._fail(node, out)

    def _succeed(self, node: Node, out: Outcome) -> None:
        task = node.task
        value = out.value
        if node.key is None and node.arguments is not None:  # ran speculatively: key from the known inputs now
            try:
                args = {k: resolve(v, _value_of) for k, v in node.arguments.items()}
                node.key = compute_key(task, task.validator.validate(args))
            except GflowError as e:
                log.warning("no cache key for %s: %s", node.id, e)
        try:
            enc = encode(value, allow_pickle=task.options.pickle, where=f"result of task '{task.name}'")
        except SerializationError as e:
            self._fail(node, Outcome.from_exception(e, "", out.started, time.time()), retryable=False)
            return
        for d, data in enc.blobs.items():
            self.recorder.add_blob(d, data)
        inline = None
        if len(enc.data) <= INLINE_MAX:
            inline = enc.data.decode()
        else:
            self.recorder.add_blob(enc.digest, enc.data)
        node.value = value
        self._record(node, SUCCEEDED, result_ref=enc.digest, result_inline=inline,
                     objects=object_ids(value) or None)
        if task.options.cache and node.key is not None:
            self.cache_mem[node.key] = value
        self.core.succeeded(node)
        node.arguments = None

    def _fail(self, node: Node, out: Outcome, retryable: bool = True) -> None:
        task = node.task
        policy = task.options.retries
        etype = type(out.exc) if out.exc is not None else None
        error = f"{out.error_type}: {out.error_message}"
        if out.error_type and out.error_type.endswith(("InvalidArguments", "SerializationError")):
            retryable = False
        if retryable and policy.should_retry(node.attempt, etype):
            self._record(node, State.RETRYING, error=error, traceback=out.traceback)
            node.state = State.RETRYING
            delay = policy.delay(node.attempt)
            node.attempt += 1
            heapq.heappush(self._timers, (time.time() + delay, next(self._seq), "retry", node, node.attempt))
            return
        err = TaskFailed(task.name, task_run_id=node.id, run_id=node.run_id, error_type=out.error_type or "Error",
                         error_message=out.error_message or "", traceback=out.traceback or "", attempts=node.attempt)
        err.__cause__ = out.exc
        node.error = err
        node.exc = out.exc
        self._record(node, State.FAILED, error=error, traceback=out.traceback)
        self.failures.append(node)
        for f in self.core.failed(node):
            self._record_upstream_failed(f)
        node.arguments = None

    def _fire_timers(self) -> None:
        now = time.time()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, node, attempt = heapq.heappop(timers)
            if node.attempt != attempt or node.state.terminal:
                continue
            if kind == "retry" and node.state is State.RETRYING:
                self.core.requeue(node)
            elif kind == "timeout" and node.state in (State.QUEUED, State.RUNNING):
                if node.handle is not None:
                    try:
                        self.executor.cancel([node.handle])
                    except Exception:  # best effort: the late result is ignored anyway
                        log.debug("cancel after timeout failed", exc_info=True)
                self._polled.pop(node.id, None)
                self.core.release(node)
                e = TaskTimeout(f"task '{node.task.name}' exceeded its timeout of {node.task.options.timeout:g}s "
                                f"(attempt {attempt})")
                self._fail(node, Outcome.from_exception(e, "", node.started, now))

    def _read_board(self) -> None:
        """Record RUNNING for calls the executor marked as started (see ``Executor.started_board``)."""
        now = time.monotonic()
        if now - self._last_board < self._board_interval:
            return
        self._last_board = now
        board = self._board
        if board is None:
            return
        nodes = self.nodes
        for rep in board.poll_starts():
            node = nodes.get(rep.call_id)
            if node is not None and node.state is QUEUED and node.attempt == rep.attempt:
                self._started(node, rep.ts)

    def _poll(self) -> None:
        now = time.monotonic()
        if now - self._last_poll < self.executor.capabilities.poll_interval:
            return
        self._last_poll = now
        nodes = list(self._polled.values())
        try:
            statuses = self.executor.poll([n.handle for n in nodes])
        except Exception:
            log.warning("polling %s failed; will retry", self.executor.name, exc_info=True)
            return
        for node, st in zip(nodes, statuses):
            if st.state is State.RUNNING and node.state is State.QUEUED:
                self._started(node, time.time())
            elif st.state.terminal and st.outcome is not None:
                self._done(node, st.outcome)
            elif st.state is State.CANCELLED:
                self._done(node, Outcome.from_exception(Cancelled("the backend cancelled the job"), "", None,
                                                        time.time()))

    def _cancel(self, run_id: str | None, reason: str) -> None:
        victims = [n for n in self.nodes.values()
                   if not n.state.terminal and (run_id is None or n.run_id == run_id)]
        handles = [n.handle for n in victims if n.handle is not None and n.state in (QUEUED, RUNNING, PENDING)]
        if handles:
            try:
                self.executor.cancel(handles)
            except Exception:
                log.warning("cancelling %d calls on %s failed", len(handles), self.executor.name, exc_info=True)
        for n in victims:
            if n.state.terminal:
                continue
            if n.state is QUEUED and self._board is not None and n.handle is not None:
                self._awaiting_start -= 1
            n.error = Cancelled(f"{reason}: task run {n.id}")
            if n.task is not None:
                self._record(n, State.CANCELLED, error=f"Cancelled: {reason}")
            self._polled.pop(n.id, None)
            for f in self.core.failed(n, State.CANCELLED):
                self._record_upstream_failed(f)

    def _check_cancelled(self) -> None:
        """Cancel everything if someone else marked the watched run CANCELLED in the store."""
        self._last_watch = time.monotonic()
        if self.cancelled_by is not None or self.watch is None:
            return
        try:
            rec = self.store.get_run(self.watch)
        except GflowError as e:
            log.debug("could not check run %s for a cancel: %s", self.watch, e)
            return
        if rec.state is CANCELLED:
            self.cancelled_by = rec.error or "Cancelled"
            self._cancel(None, f"run cancelled from outside ({self.cancelled_by})")

    def _check_drains(self) -> None:
        keep = []
        for run_id, ev in self._drains:
            if self.core.idle(run_id):
                ev.set()
            else:
                keep.append((run_id, ev))
        self._drains = keep

