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
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from gflow._context import current_flow
from gflow.errors import InvalidArguments
from gflow.flows._engine import Engine
from gflow.flows._events import MAP, SUBFLOW, TaskState
from gflow.flows._future import _LEAF, Future, find_futures, resolve
from gflow.flows._gc import gc_tuned
from gflow.flows._keys import compute_keys
from gflow.flows._provenance import input_digests, note_inputs, note_task
from gflow.flows._runs import open_run_context, prepare_resume
from gflow.serialization import encode
from gflow.states import State
from gflow.store import RunRecord
from gflow.tasks import ArgumentValidator, code_version, group_for

P = ParamSpec("P")
R = TypeVar("R")


def cancel_run(run_id: str, *, store: Any = None, profile: str | None = None, reason: str = "cancelled by user") -> Any:
    """Cancel a run by id (from any process): its driver stops its calls within about a second.

    Returns the run's record. See ``gflow.store.cancel_run``.
    """
    from gflow.store import cancel_run as _cancel

    with open_run_context(profile, store=store) as rc:
        return _cancel(rc.store, run_id, reason)


def new_run_id() -> str:
    """Sortable, readable and unique: ``20261122-161052-3fa9c1``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _has_future(v: Any) -> bool:
    return type(v) is Future or (type(v) not in _LEAF and find_futures(v, []))


#: calls of a map handed to a non-array executor at a time
_MAP_STEP = 1024


class FlowRun:
    """The context a flow body runs in: task calls become futures recorded under ``id``."""

    def __init__(self, flow: Flow, run_id: str, engine: Engine, parent: FlowRun | None = None):
        self.flow = flow
        self.id = run_id
        self.engine = engine
        self.parent = parent
        self._ids = itertools.count(1)
        self._noted: set[int] = set()  # tasks whose provenance this run noted (ids of task objects)
        self._inputs: dict[str, dict[str, Any]] = {}  # argument digests of cacheable calls, written after each add

    def next_id(self) -> str:
        return f"{self.id}.{next(self._ids)}"

    def task_state(self, task: Any, args: tuple, kwargs: dict, index: int | None = None,
                   where: tuple[str, str | None] | None = None, note: bool = True) -> TaskState:
        """Bind and check a call's arguments (computing its keys when they are all known) and make its
        task state; raises InvalidArguments / SerializationError at the call, naming the argument.
        ``where``: the (executor, image) the task routes to, when the caller knows it already (a map). ``note``:
        record the argument digests of a cacheable call (not from the engine's thread: a deferred map's elements)."""
        validator = task.validator
        arguments = validator.bind(args, kwargs)
        futs: list[Future] = []
        for v in arguments.values():
            if type(v) not in _LEAF:
                find_futures(v, futs)
        engine = self.engine
        if where is None:
            executor = engine.route(task)
            image = engine.image_key(executor, task)
        else:
            executor, image = where
        if task.options.resources.spot:
            _check_spot(task, engine, executor)
        key = ikey = None
        version = code_version(task)  # here, in the flow's thread: the scheduling core reads no files
        if id(task) not in self._noted:
            self._noted.add(id(task))
            note_task(engine.store, self.id, task, version, image)
        deps: list[str] = []
        if futs:
            for f in futs:
                if f._engine is not engine:
                    raise InvalidArguments(f"task '{task.name}': {f!r} belongs to another flow run")
            arguments = validator.validate(arguments, skip=_has_future)
            deps = list(dict.fromkeys(f.id for f in futs))
        else:
            arguments = validator.validate(arguments)
            key, ikey = compute_keys(task, arguments, image, version)
        tid = self.next_id()
        if note and key is not None and task.options.cache:  # what `gflow cache explain` compares, by argument
            self._inputs[tid] = {"task": task.identity, "ikey": ikey, "args": input_digests(task, arguments)}
        return TaskState(tid, self.id, task, arguments, deps, key=key, ikey=ikey, index=index,
                         executor=executor, image=image, version=version)

    def _note_inputs(self) -> None:
        if self._inputs:
            calls, self._inputs = self._inputs, {}
            note_inputs(self.engine.store, self.id, calls)

    def call(self, task: Any, args: tuple, kwargs: dict) -> Future:
        ts = self.task_state(task, args, kwargs)
        fut: Future = Future(ts.id, self.id, task.name, self.engine)
        self.engine.add([ts], [fut])
        self._note_inputs()
        return fut

    def map(self, task: Any, iterables: Sequence[Any], common: dict, options: dict | None = None) -> Any:
        """``options``: the map's own (``min_success``, ``max_concurrency``; checked by ``Task.map``)."""
        pending = [it for it in iterables if type(it) is Future]
        if pending:
            return self._map_later(task, iterables, common, pending, options)
        rows = list(zip(*iterables, strict=True)) if len(iterables) > 1 else [(x,) for x in iterables[0]]
        group = group_for(task, len(rows), options)
        engine = self.engine
        executor = engine.route(task)
        where = (executor, engine.image_key(executor, task))
        # An array backend gets the fan-out as one batch (one array job); any other starts on the first
        # calls while the rest are still being built (and the recorder starts writing sooner).
        step = (len(rows) or 1) if engine.executors[executor].capabilities.array_jobs else _MAP_STEP
        futs: list[Future] = []
        for lo in range(0, len(rows), step):
            tss = [self.task_state(task, rows[i], common, i, where) for i in range(lo, min(lo + step, len(rows)))]
            if group is not None:
                for ts in tss:
                    ts.group = group
            part: list[Future] = [Future(ts.id, self.id, task.name, engine) for ts in tss]
            engine.add(tss, part)
            self._note_inputs()
            futs += part
        return futs

    def _map_later(self, task: Any, iterables: Sequence[Any], common: dict, pending: list[Future],
                   options: dict | None = None) -> Future:
        """``task.map(future_of_a_list)``: one future for the list of results, fanned out when ready."""
        for d in pending:
            if d._engine is not self.engine:
                raise InvalidArguments(f"task '{task.name}'.map(): {d!r} belongs to another flow run")

        def new_child(task: Any, row: tuple, common: dict, i: int) -> TaskState:
            return self.task_state(task, row, common, i, note=False)  # in the engine's thread: no store writes

        ts = TaskState(self.next_id(), self.id, _MapTask(task), None, list(dict.fromkeys(d.id for d in pending)),
                       kind=MAP, expand=(task, list(iterables), common, new_child, options),
                       executor=self.engine.default)
        fut: Future = Future(ts.id, self.id, f"{task.name}.map", self.engine)
        self.engine.add([ts], [fut])
        return fut

    def subflow(self, flow: Flow, args: tuple, kwargs: dict) -> Future:
        arguments = flow.validator.validate(flow.validator.bind(args, kwargs), skip=_has_future)
        engine = self.engine
        ts = TaskState(self.next_id(), self.id, None, None, [], kind=SUBFLOW, executor=engine.default)
        fut: Future = Future(ts.id, self.id, f"subflow {flow.name}", engine)
        engine.add([ts], [fut])
        child_id = new_run_id()
        try:
            params = "{}" if any(_has_future(v) for v in arguments.values()) else \
                encode(arguments, where=f"flow '{flow.name}' parameters").data.decode()
        except Exception:  # noqa: BLE001 - parameters are for display; the subflow still runs
            params = "{}"
        record = RunRecord(id=child_id, flow=flow.name, flow_path=flow.path, parent_run=self.id, params=params,
                           created=time.time(), executor=engine.default, host=socket.gethostname(), pid=os.getpid())
        engine.start_run(record, parent=ts.id, create=True)
        child = FlowRun(flow, child_id, engine, parent=self)

        def body() -> None:
            token = current_flow.set(child)
            try:
                call_args, call_kwargs = flow.validator.call_args({k: resolve(v) for k, v in arguments.items()})
                out = flow.fn(*call_args, **call_kwargs)
            except BaseException as e:  # noqa: BLE001 - reported through the subflow's run and future
                engine.body_returned(child_id, error=e, traceback=traceback.format_exc())
                return
            finally:
                current_flow.reset(token)
            engine.body_returned(child_id, value=out)

        threading.Thread(target=body, name=f"gflow-subflow-{flow.name}", daemon=True).start()
        return fut


def _check_spot(task: Any, engine: Engine, executor: str) -> None:
    """``Resources(spot=True)`` on an executor without spot capacity: one line at the call, before anything runs."""
    ex = engine.executors.get(executor)
    if ex is not None and not ex.capabilities.spot:
        raise InvalidArguments(
            f"task '{task.name}' asks for spot capacity (Resources(spot=True)), but executor '{executor}' has none: "
            f"use aws-batch with spot_queue, gcp-batch, or volcano with spot_selector; or drop spot=True")


class _MapTask:
    """Stands in for a task on the state of a deferred map (recorded as task 'gflow:map')."""

    def __init__(self, task: Any):
        from gflow.tasks import TaskOptions

        self.name = f"{task.name}.map"
        self.identity = "gflow:map"
        self.options = TaskOptions()


@dataclass
class RunResult:
    """What ``flow.run(..., return_run=True)`` returns.

    Attributes:
        reused_changed: (resume) tasks whose calls were reused although their code changed since.
        summary: one line per map with ``min_success`` whose elements failed (``map 'score': 9,997 of 10,000
            succeeded``).
    """

    id: str
    state: State
    value: Any = None
    error: BaseException | None = None
    reused_changed: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


class Flow(Generic[P, R]):
    """A decorated flow function. Calling it runs it here (embedded defaults) and returns its value."""

    def __init__(self, fn: Callable[P, R], *, name: str | None = None, image: Any = None,
                 description: str | None = None):
        self.fn: Callable[..., Any] = fn
        self.name = name or fn.__name__
        self.image = image
        self.description = description or (fn.__doc__ or "").strip().split("\n")[0]
        self.validator = ArgumentValidator(fn, f"flow '{self.name}'")
        self.source_file: str | None = None
        self._qualname = getattr(fn, "__qualname__", self.name)
        self._module = getattr(fn, "__module__", "__main__")
        functools.update_wrapper(self, fn)

    @property
    def path(self) -> str:
        """Where to import the flow from again (for resume): ``module:qualname`` or ``file.py:name``."""
        if self.source_file:
            return f"{self.source_file}:{self._qualname}"
        main_file = getattr(sys.modules.get(self._module), "__file__", None)
        if self._module == "__main__" and main_file:
            return f"{os.path.abspath(main_file)}:{self._qualname}"
        return f"{self._module}:{self._qualname}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the flow here; inside another flow, run it as a subflow and return its value."""
        ctx = current_flow.get()
        if ctx is not None:
            value: R = ctx.subflow(self, args, kwargs).result()
            return value
        options: dict[str, Any] = dict(kwargs)
        result: R = self.run(*args, **options)
        return result

    def submit(self, *args: Any, **kwargs: Any) -> Future:
        """Inside a flow: start this flow as a subflow and return its future at once (subflows
        started this way run concurrently)."""
        ctx = current_flow.get()
        if ctx is None:
            raise RuntimeError(f"flow '{self.name}'.submit() needs a running flow; call the flow or use .run()")
        return ctx.subflow(self, args, kwargs)

    def run(self, *args: Any, executor: Any = None, store: Any = None, artifacts: Any = None,
            profile: str | None = None, tags: Sequence[str] = (), params: dict[str, Any] | None = None,
            return_run: bool = False, resume_from: str | None = None, rerun_changed: bool = False,
            force: bool = False, run_id: str | None = None, events: str | None = None, cache: bool = True,
            observer: Callable[[str, Engine], Callable[[], None] | None] | None = None, **kwargs: Any) -> Any:
        """Run the flow to completion and return its value.

        Args:
            executor: Executor name/URL or instance (``"local"``, ``"local://processes"``, ``"dask://h:p"``).
            store: State store URL or instance; artifacts: artifact store URL or instance.
            profile: Profile of ``gflow.toml`` to start from. events: a ``redis://`` live-state layer.
            tags: Labels recorded on the run.
            params: Flow parameters given as a dict (for names that clash with these options).
            return_run: Return a :class:`RunResult` (id, state, value, error) instead of the value,
                without raising on failure.
            resume_from: A failed, cancelled or killed run: every call that finished there is reused (whatever
                its ``cache`` setting, also if its task's code changed since: see ``rerun_changed``).
            rerun_changed: With ``resume_from``: recompute the calls whose task code changed since.
            force: With ``resume_from``: resume even if the run was already resumed successfully, or its
                driver may be alive on another host.
            run_id: The new run's id (default: a fresh one); used by supervisors that must know it first.
            cache: False: take no result from the cache, whatever the tasks' ``cache`` (replay does this).

        Raises:
            InvalidArguments: before anything is recorded, if the parameters do not fit the signature.
            TaskFailed: if a task failed (after its retries); names the task, carries its traceback.
        """
        kwargs.update(params or {})
        arguments = self.validator.validate(self.validator.bind(args, kwargs))
        params_json = encode(arguments, where=f"flow '{self.name}' parameters").data.decode()
        run_id = run_id or new_run_id()
        with open_run_context(profile, executor=executor, store=store, artifacts=artifacts, events=events) as rc, \
                gc_tuned():
            st = rc.store
            resume = prepare_resume(st, resume_from, run_id, force) if resume_from else None
            engine = Engine(st, rc.artifacts, executor=rc.executor, routes=rc.routes, backends=rc.backends,
                            resume=resume.results if resume else None, rerun_changed=rerun_changed,
                            use_cache=cache, adopt=resume.inflight if resume else None)
            try:
                image_tag = preflight(engine, self)
                record = RunRecord(id=run_id, flow=self.name, flow_path=self.path, params=params_json,
                                   executor=rc.executor_description, created=time.time(), tags=list(tags),
                                   host=socket.gethostname(), pid=os.getpid(),
                                   resumed_from=resume.run.id if resume else None, image_tag=image_tag,
                                   extra={"profile": rc.profile_name})
                engine.create_run(record)  # through the core, like a subflow; written before the body starts
                stop_observer = observer(run_id, engine) if observer else None
                try:
                    return self._drive(engine, record, arguments, return_run)
                finally:
                    if stop_observer:
                        stop_observer()
            finally:
                engine.close()

    def _drive(self, engine: Engine, record: RunRecord, arguments: dict[str, Any], return_run: bool) -> Any:
        """Run the body and wait for the run's end, as the scheduling core decided it (this reports it)."""
        run_id = record.id
        engine.watch = run_id
        engine.body_started(run_id)
        ctx = FlowRun(self, run_id, engine)
        returned = interrupted = False
        try:
            token = current_flow.set(ctx)
            try:
                call_args, call_kwargs = self.validator.call_args(arguments)
                out = self.fn(*call_args, **call_kwargs)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - re-raised after the run is recorded
                engine.body_returned(run_id, error=e, traceback=traceback.format_exc())
            else:
                engine.body_returned(run_id, value=out)
            finally:
                current_flow.reset(token)
            returned = True
            fin = engine.wait_run(run_id)
        except KeyboardInterrupt:
            interrupted = True
            engine.cancel(None, "interrupted (Ctrl-C)")
            if not returned:
                engine.body_returned(run_id, error=KeyboardInterrupt())
            fin = engine.wait_run(run_id, timeout=60)
        engine.close()  # every transition and the run's terminal state are written before we return
        if interrupted:
            raise KeyboardInterrupt
        if fin.state is State.SUCCEEDED:
            if return_run:
                return RunResult(run_id, fin.state, fin.value, None, fin.reused_changed, fin.summary)
            return fin.value
        if return_run:
            return RunResult(run_id, fin.state, None, fin.error, fin.reused_changed, fin.summary)
        assert fin.error is not None
        raise fin.error


def preflight(engine: Engine, flow: Flow) -> str | None:
    """The checks every run goes through before it is recorded, one line each on failure: the artifact store
    (it exists and answers, where it can be asked), the flow's executor's own setup (credentials, region,
    cluster, the store its workers reach: :meth:`Executor.preflight`), then its image. Returns the image tag
    the run records. Executors routed to by task are checked when they are first used."""
    check = getattr(engine.artifacts, "check", None)
    if callable(check):
        check()
    executor = engine.executors[engine.default]
    executor.preflight()
    tag: str | None = executor.image_tag_for(flow)
    return tag


def task_flow(task: Any, source_file: str | None = None) -> Flow:
    """A flow that makes one call of ``task`` (``gflow run FILE.py:TASK``, ``task.run(...)``): recorded,
    cached and resumable like any run."""

    def one_call(*args: Any, **kwargs: Any) -> Any:
        return task(*args, **kwargs)

    fl: Flow = Flow(one_call, name=task.name, image=task.options.image)
    fl.validator = ArgumentValidator(task.fn, f"task '{task.name}'")
    fl._qualname = task.fn.__qualname__
    fl._module = task.fn.__module__
    fl.source_file = source_file
    fl.description = f"one call of task {task.name}"
    return fl


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
