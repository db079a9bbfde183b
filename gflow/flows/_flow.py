"""The ``@flow`` decorator, the flow-run context that turns task calls into futures, and running a flow."""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from gflow._context import current_flow
from gflow.artifacts import open_artifacts
from gflow.config import load_profile
from gflow.errors import Cancelled, FlowFailed, InvalidArguments, InvalidTransition, TaskFailed, UpstreamFailed
from gflow.executors import get_executor
from gflow.flows._engine import Engine, compute_key
from gflow.flows._future import _LEAF, Future, find_futures, resolve
from gflow.serialization import encode
from gflow.states import State
from gflow.store import RunRecord, open_store
from gflow.tasks import ArgumentValidator

P = ParamSpec("P")
R = TypeVar("R")


def cancel_run(run_id: str, *, store: Any = None, profile: str | None = None, reason: str = "cancelled by user") -> Any:
    """Cancel a run by id (from any process): its driver stops its calls within about a second.

    Returns the run's record. See ``gflow.store.cancel_run``.
    """
    from gflow.store import cancel_run as _cancel

    return _cancel(open_store(load_profile(profile, store=store).store), run_id, reason)


def new_run_id() -> str:
    """Sortable, readable and unique: ``20261122-161052-3fa9c1``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _has_future(v: Any) -> bool:
    return type(v) is Future or (type(v) not in _LEAF and find_futures(v, []))


class FlowRun:
    """The context a flow body runs in: task calls become futures recorded under ``id``."""

    def __init__(self, flow: Flow, run_id: str, engine: Engine, parent: FlowRun | None = None):
        self.flow = flow
        self.id = run_id
        self.engine = engine
        self.parent = parent
        self._ids = itertools.count(1)

    def _node(self, task: Any, args: tuple, kwargs: dict, index: int | None = None) -> Future:
        validator = task.validator
        arguments = validator.bind(args, kwargs)
        deps: list[Future] = []
        for v in arguments.values():
            if type(v) not in _LEAF:
                find_futures(v, deps)
        key = None
        if deps:
            for d in deps:
                if d.engine is not self.engine:
                    raise InvalidArguments(f"task '{task.name}': {d!r} belongs to another flow run")
            arguments = validator.validate(arguments, skip=_has_future)
        else:
            arguments = validator.validate(arguments)
            key = compute_key(task, arguments)
        node = Future(f"{self.id}.{next(self._ids)}", self.id, task, arguments, deps, index)
        node.engine = self.engine
        node.key = key
        return node

    def call(self, task: Any, args: tuple, kwargs: dict) -> Future:
        node = self._node(task, args, kwargs)
        self.engine.add([node])
        return node

    def map(self, task: Any, iterables: Sequence[Any], common: dict) -> Any:
        pending = [it for it in iterables if type(it) is Future]
        if pending:
            return self._map_later(task, iterables, common, pending)
        rows = list(zip(*iterables, strict=True)) if len(iterables) > 1 else [(x,) for x in iterables[0]]
        nodes = [self._node(task, row, common, i) for i, row in enumerate(rows)]
        self.engine.add(nodes)  # one batch: the executor sees the fan-out at once
        return nodes

    def _map_later(self, task: Any, iterables: Sequence[Any], common: dict, pending: list[Future]) -> Future:
        """``task.map(future_of_a_list)``: one future for the list of results, fanned out when ready."""
        for d in pending:
            if d.engine is not self.engine:
                raise InvalidArguments(f"task '{task.name}'.map(): {d!r} belongs to another flow run")
        node = Future(f"{self.id}.{next(self._ids)}", self.id, _MapTask(task), None, pending)
        node.engine = self.engine
        node.expand = (self, task, list(iterables), common)
        self.engine.add([node])
        return node

    def subflow(self, flow: Flow, args: tuple, kwargs: dict) -> Future:
        arguments = flow.validator.validate(flow.validator.bind(args, kwargs), skip=_has_future)
        node = Future(f"{self.id}.{next(self._ids)}", self.id, None, None, [])
        node.engine = self.engine
        self.engine.add([node])
        child_id = new_run_id()
        store = self.engine.store
        store.create_run(RunRecord(id=child_id, flow=flow.name, flow_path=flow.path, parent_run=self.id,
                                   params="{}", created=time.time(), executor=self.engine.executor.name,
                                   host=socket.gethostname(), pid=os.getpid()))
        store.set_run_state(child_id, State.RUNNING, time.time())
        child = FlowRun(flow, child_id, self.engine, parent=self)

        def body() -> None:
            token = current_flow.set(child)
            try:
                call_args, call_kwargs = flow.validator.call_args({k: resolve(v) for k, v in arguments.items()})
                out = flow.fn(*call_args, **call_kwargs)
            except BaseException as e:  # noqa: BLE001 - reported through the future
                current_flow.reset(token)
                self.engine.drain(child_id)
                store.set_run_state(child_id, State.FAILED, time.time(), error=f"{type(e).__name__}: {e}")
                self.engine.finish_external(node, False, exc=e, tb=traceback.format_exc())
                return
            current_flow.reset(token)
            self.engine.drain(child_id)
            try:
                value = resolve(out)
            except BaseException as e:  # noqa: BLE001
                store.set_run_state(child_id, State.FAILED, time.time(), error=f"{type(e).__name__}: {e}")
                self.engine.finish_external(node, False, exc=e, tb=traceback.format_exc())
                return
            failed = [n for n in self.engine.failures if n.run_id == child_id]
            if failed:
                err = self.engine.error_of(failed[0])
                store.set_run_state(child_id, State.FAILED, time.time(), error=str(err).split("\n")[0])
                self.engine.finish_external(node, False, exc=err)
                return
            store.set_run_state(child_id, State.SUCCEEDED, time.time())
            self.engine.finish_external(node, True, value)

        threading.Thread(target=body, name=f"gflow-subflow-{flow.name}", daemon=True).start()
        return node


class _MapTask:
    """Stands in for a task on the node of a deferred map (recorded as task 'gflow:map')."""

    def __init__(self, task: Any):
        from gflow.tasks import TaskOptions

        self.name = f"{task.name}.map"
        self.identity = "gflow:map"
        self.options = TaskOptions()


@dataclass
class RunResult:
    """What ``flow.run(..., return_run=True)`` returns."""

    id: str
    state: State
    value: Any = None
    error: BaseException | None = None


class Flow(Generic[P, R]):
    """A decorated flow function. Calling it runs it here (embedded defaults) and returns its value."""

    def __init__(self, fn: Callable[P, R], *, name: str | None = None, image: Any = None,
                 description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        self.image = image
        self.description = description or (fn.__doc__ or "").strip().split("\n")[0]
        self.validator = ArgumentValidator(fn, f"flow '{self.name}'")
        self.source_file: str | None = None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def path(self) -> str:
        """Where to import the flow from again (for resume): ``module:qualname`` or ``file.py:name``."""
        if self.source_file:
            return f"{self.source_file}:{self.fn.__qualname__}"
        main_file = getattr(sys.modules.get(self.fn.__module__), "__file__", None)
        if self.fn.__module__ == "__main__" and main_file:
            return f"{os.path.abspath(main_file)}:{self.fn.__qualname__}"
        return f"{self.fn.__module__}:{self.fn.__qualname__}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the flow here; inside another flow, run it as a subflow and return its value."""
        ctx = current_flow.get()
        if ctx is not None:
            return ctx.subflow(self, args, kwargs).result()  # type: ignore[no-any-return]
        return self.run(*args, **kwargs)  # type: ignore[arg-type]

    def submit(self, *args: Any, **kwargs: Any) -> Future:
        """Inside a flow: start this flow as a subflow and return its future at once (subflows
        started this way run concurrently)."""
        ctx = current_flow.get()
        if ctx is None:
            raise RuntimeError(f"flow '{self.name}'.submit() needs a running flow; call the flow or use .run()")
        return ctx.subflow(self, args, kwargs)

    def run(self, *args: Any, executor: Any = None, store: Any = None, artifacts: Any = None,
            profile: str | None = None, tags: Sequence[str] = (), params: dict[str, Any] | None = None,
            return_run: bool = False, resume_from: str | None = None,
            observer: Callable[[str, Engine], Callable[[], None] | None] | None = None, **kwargs: Any) -> Any:
        """Run the flow to completion and return its value.

        Args:
            executor: Executor name/URL or instance (``"local"``, ``"local://processes"``, ``"dask://h:p"``).
            store: State store URL or instance; artifacts: artifact store URL or instance.
            profile: Profile of ``gflow.toml`` to start from.
            tags: Labels recorded on the run.
            params: Flow parameters given as a dict (for names that clash with these options).
            return_run: Return a :class:`RunResult` (id, state, value, error) instead of the value,
                without raising on failure.
            resume_from: A failed or killed run whose finished task results are reused.

        Raises:
            InvalidArguments: before anything is recorded, if the parameters do not fit the signature.
            TaskFailed: if a task failed (after its retries); names the task, carries its traceback.
        """
        kwargs.update(params or {})
        arguments = self.validator.validate(self.validator.bind(args, kwargs))
        params_json = encode(arguments, where=f"flow '{self.name}' parameters").data.decode()
        prof = load_profile(profile, executor=executor, store=store, artifacts=artifacts)
        st = open_store(prof.store, events=prof.events)
        arts = open_artifacts(prof.artifacts)
        owns_executor = not hasattr(prof.executor, "submit")
        ex = get_executor(prof.executor)
        resume_results = st.results_by_key(st.get_run(resume_from).id) if resume_from else None
        # executors that run code in images (docker, batch, volcano) say which tag this flow runs as
        image_tag = ex.image_tag_for(self)
        run_id = new_run_id()
        executor_desc = prof.executor if isinstance(prof.executor, str) else ex.name
        st.create_run(RunRecord(id=run_id, flow=self.name, flow_path=self.path, params=params_json,
                                executor=executor_desc, created=time.time(), tags=list(tags),
                                host=socket.gethostname(), pid=os.getpid(),
                                resumed_from=st.get_run(resume_from).id if resume_from else None,
                                image_tag=image_tag, extra={"profile": prof.name}))
        engine = Engine(ex, st, arts, resume_results=resume_results)
        stop_observer = observer(run_id, engine) if observer else None
        try:
            return self._execute(run_id, engine, arguments, return_run)
        finally:
            if stop_observer:
                stop_observer()
            engine.stop()
            if owns_executor:
                ex.close()

    def _execute(self, run_id: str, engine: Engine, arguments: dict[str, Any], return_run: bool) -> Any:
        st = engine.store
        st.set_run_state(run_id, State.RUNNING, time.time())
        ctx = FlowRun(self, run_id, engine)
        engine.watch = run_id
        body_exc: BaseException | None = None
        out: Any = None
        token = current_flow.set(ctx)
        try:
            try:
                call_args, call_kwargs = self.validator.call_args(arguments)
                out = self.fn(*call_args, **call_kwargs)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - re-raised after the run is recorded
                body_exc = e
            finally:
                current_flow.reset(token)
            engine.drain(run_id)
            value = None
            if body_exc is None:
                try:
                    value = resolve(out)
                except BaseException as e:  # noqa: BLE001
                    body_exc = e
        except KeyboardInterrupt:
            engine.cancel(None, "interrupted (Ctrl-C)")
            engine.recorder.close()
            st.set_run_state(run_id, State.CANCELLED, time.time(), error="Cancelled: interrupted (Ctrl-C)")
            raise
        failures = [engine.error_of(n) for n in engine.failures if n.run_id == run_id]
        error = body_exc or (failures[0] if failures else None)
        if isinstance(body_exc, UpstreamFailed) and failures:
            error = failures[0]  # name the task that failed, with its traceback, not a downstream victim
        if engine.cancelled_by is not None:
            error = Cancelled(f"run {run_id} was cancelled: {engine.cancelled_by}")
        engine.recorder.close()
        if error is None:
            enc = None
            try:
                enc = encode(value, where=f"result of flow '{self.name}'")
            except Exception:  # a flow may return anything; only canonical values are stored
                pass
            st.set_run_state(run_id, State.SUCCEEDED, time.time(), result_ref=enc.digest if enc else None,
                             result_inline=enc.data.decode() if enc and len(enc.data) < 65536 else None)
            return RunResult(run_id, State.SUCCEEDED, value) if return_run else value
        if isinstance(error, FlowFailed):
            if isinstance(error, TaskFailed) and len(failures) > 1:
                error.args = (error.args[0] + f"\n\n({len(failures) - 1} more task(s) failed in run {run_id})",)
            error.run_id = run_id
            error.failures = [f for f in failures if isinstance(f, TaskFailed)] or error.failures
        final = State.CANCELLED if isinstance(error, Cancelled) else State.FAILED
        first_line = str(error).split("\n")[0]
        tb = getattr(error, "traceback", "") or "".join(traceback.format_exception(error))
        try:
            st.set_run_state(run_id, final, time.time(), error=f"{type(error).__name__}: {first_line}", traceback=tb)
        except InvalidTransition:
            if engine.cancelled_by is None:  # only a cancel from outside may have ended the run first
                raise
        if return_run:
            return RunResult(run_id, final, None, error)
        raise error


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(fn: None = None, /, *, name: str | None = ..., image: Any = ...,
         description: str | None = ...) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Make a function a gflow flow: ``@flow`` or ``@flow(name=..., image=gflow.Image(...))``."""

    def wrap(f: Callable[P, R]) -> Flow[P, R]:
        return Flow(f, **options)

    return wrap(fn) if fn is not None else wrap
