"""The Dask distributed executor: ``dask`` (a LocalCluster sized to this machine), ``dask://host:8786``
(an existing cluster, used unchanged) or ``DaskExecutor(client=client)``.

Calls are grouped by task and submitted with one ``client.map`` per group. Each worker-side call
returns an :class:`~gflow.executors.base.Outcome` (task exceptions are caught on the worker, so the
engine owns retries). Completion reaches the engine through ``add_done_callback``; a gatherer thread
fetches finished outcomes in batches (one ``client.gather`` per batch, not one round-trip per call)
and releases the Dask futures at once, so results do not pile up on the workers. Dask-level
failures (a worker died: ``KilledWorker``; a future cancelled by the cluster) become failed outcomes.

Tasks travel by reference (``Task.__reduce__`` imports ``module:qualname`` on the worker), so they
must be importable there. See ``docs/dask.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import queue
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any

import distributed

from gflow._walk import substitute
from gflow.errors import ConfigError, ExecutorError
from gflow.executors.base import (
    UPSTREAM_PENDING,
    Call,
    CallDone,
    CallStarted,
    Capabilities,
    Executor,
    JobStatus,
    Outcome,
    Ref,
    importable_problem,
    run_task,
)
from gflow.states import State

log = logging.getLogger("gflow.executors.dask")

_GATHER_BATCH = 5000
_INFO_TTL = 2.0


@functools.lru_cache(maxsize=256)
def _task_from(blob: bytes) -> Any:
    task, artifacts_url = pickle.loads(blob)  # Task.__reduce__: imports module:qualname on this worker
    if artifacts_url:  # task code (gflow.models) finds its run's artifact store through the profile
        os.environ["GFLOW_ARTIFACTS"] = artifacts_url
    return task


def _run_on_worker(payload: bytes, *, task: bytes) -> Outcome:
    """Body of one Dask task. The task and the arguments travel as opaque pickles, so the scheduler
    (which unpickles the graph) needs gflow but not the user's task modules or argument types, and
    Dask never mistakes an argument string for one of its keys."""
    args, kwargs = pickle.loads(payload)
    return run_task(_task_from(task), args, kwargs)


def _run_reporting_start(payload: bytes, call_id: str, attempt: int, *, task: bytes, topic: str) -> Outcome:
    """Like :func:`_run_on_worker`, but first tells the driver that the call started: a task's
    timeout counts from its start, not from its submit (it may wait in the scheduler's queue)."""
    try:
        distributed.get_worker().log_event(topic, [call_id, attempt, time.time()])
    except Exception:  # noqa: BLE001 - the start is reported again with the outcome
        log.debug("could not report the start of %s", call_id, exc_info=True)
    return _run_on_worker(payload, task=task)


def _fill_refs(value: Any, values: dict[str, Any]) -> Any:
    """Replace ``Ref`` placeholders (in lists, tuples, sets, dicts, pydantic fields) by results."""
    return substitute(value, Ref, lambda r: values[r.call_id])


def _run_with_refs(payload: bytes, ref_ids: list[str], *inputs: Outcome, task: bytes) -> Outcome:
    """A speculative call: Dask hands over the Outcomes of the calls it depends on (kept on the
    cluster). If one failed, say so (the engine reruns this call the ordinary way later); else fill
    the inputs in, check them against the task's annotations, and run."""
    values = {}
    for rid, out in zip(ref_ids, inputs):
        if not isinstance(out, Outcome) or not out.ok:
            return Outcome(False, error_type=UPSTREAM_PENDING, error_message=f"input {rid} is not available",
                           ended=time.time())
        values[rid] = out.value
    args, kwargs = pickle.loads(payload)
    t = _task_from(task)
    try:
        bound = t.validator.bind(_fill_refs(args, values), _fill_refs(kwargs, values))
        args, kwargs = t.validator.call_args(t.validator.validate(bound))
    except Exception as e:  # noqa: BLE001 - the engine records it (no retry for bad arguments)
        return Outcome.from_exception(e, traceback.format_exc(), None, time.time())
    return run_task(t, args, kwargs)


class _Handle:
    """What the engine holds for one submitted call. ``future`` is dropped once the call is reported."""

    __slots__ = ("key", "call_id", "attempt", "future", "state", "cancelled", "speculative", "started")

    def __init__(self, key: str, call_id: str, attempt: int, future: Any = None, state: State = State.QUEUED):
        self.key = key
        self.call_id = call_id
        self.attempt = attempt
        self.future = future
        self.state = state
        self.cancelled = False
        self.speculative = False
        self.started = False

    def __repr__(self) -> str:
        return f"<dask {self.key} {self.state.value}>"


def _dask_key(call: Call) -> str:
    # key_split() takes the prefix before the first '-' as the dashboard's task-group name
    name = call.task.name.replace("-", "_")
    return f"{name}-{call.id}-a{call.attempt}"


def _resource_request(call: Call, declared: set[str]) -> dict[str, float]:
    """Dask resources for a call: GPU always (so GPU tasks only land on GPU workers); MEMORY only where
    some worker declares it (otherwise nothing could ever run the call). CPU is left to Dask's threads."""
    res = call.task.options.resources
    out: dict[str, float] = {}
    if res.gpu:
        out["GPU"] = res.gpu
    if res.memory and "MEMORY" in declared:
        out["MEMORY"] = res.memory
    return out


def parse_spec(spec: str) -> dict[str, Any]:
    """Constructor arguments from ``dask``, ``dask://?n_workers=2`` or ``dask://host:8786?timeout=5``.

    Raises:
        ConfigError: for an unknown query argument or a malformed value.
    """
    rest = spec.split("://", 1)[1] if "://" in spec else spec.split(":", 1)[1] if ":" in spec else ""
    netloc, _, query = rest.partition("?")
    netloc = netloc.strip("/")
    out: dict[str, Any] = {}
    if netloc and netloc != "local":
        out["address"] = netloc if "://" in netloc else f"tcp://{netloc}"
    ints = {"n_workers", "threads_per_worker", "max_in_flight", "allowed_failures"}
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True):
        try:
            if k in ints:
                out[k] = int(v)
            elif k == "timeout":
                out[k] = float(v)
            elif k in ("memory_limit", "protocol"):
                out[k] = v
            else:
                raise ConfigError(f"dask executor {spec!r}: unknown option {k!r}; known: "
                                  f"{', '.join(sorted(ints | {'timeout', 'memory_limit', 'protocol'}))}")
        except ValueError:
            raise ConfigError(f"dask executor {spec!r}: option {k}={v!r} is not a number") from None
    if "address" in out and set(out) & {"n_workers", "threads_per_worker", "memory_limit", "allowed_failures"}:
        raise ConfigError(f"dask executor {spec!r}: cluster-sizing options only apply to the local cluster "
                          f"(dask://?n_workers=...), not to an existing scheduler")
    return out


class DaskExecutor(Executor):
    """Runs calls on a Dask distributed cluster. A context manager: ``close()`` stops its gatherer
    thread and, for a cluster or client it made itself, closes them (a given client stays open).

    Args:
        address: Scheduler address (``tcp://host:8786``); ``None`` starts a LocalCluster here.
        client: An existing ``distributed.Client`` to use (never closed by gflow).
        timeout: Seconds to wait for the scheduler when connecting.
        n_workers: LocalCluster workers (default: cpu count); one process each.
        threads_per_worker: LocalCluster threads per worker (default 1).
        memory_limit: LocalCluster memory per worker (Dask's ``"auto"`` by default); each worker
            also declares it as its ``MEMORY`` resource.
        allowed_failures: LocalCluster only: how many worker deaths Dask absorbs by re-running a call
            before it reports ``KilledWorker`` (default 0, so gflow's retry policy sees every one).
        max_in_flight: Backpressure: at most this many calls on the cluster at once (default
            ``max(1000, 200 * workers)``); the engine keeps the rest ready.
    """

    name = "dask"
    # dependent calls start with Dask futures of their inputs (chains stay on the cluster); starts are
    # reported from the worker for calls with a timeout, by a once-a-second watcher for the others
    capabilities = Capabilities(accepts_refs=True)

    def __init__(self, address: str | None = None, *, client: Any = None, timeout: float = 5.0,
                 n_workers: int | None = None, threads_per_worker: int = 1, memory_limit: str | int = "auto",
                 allowed_failures: int = 0, max_in_flight: int | None = None, protocol: str | None = None):
        if client is not None and address is not None:
            raise ConfigError("DaskExecutor: give either a scheduler address or a client, not both")
        self._cluster: Any = None
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif address is not None:
            self.client = _connect(address, timeout)
        else:
            self._cluster = _local_cluster(n_workers or os.cpu_count() or 1, threads_per_worker, memory_limit,
                                           allowed_failures, protocol)
            try:
                self.client = _connect(self._cluster.scheduler_address, timeout)
            except BaseException:
                self._cluster.close()
                raise
        self.address = self.client.scheduler.address
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self._done_q: queue.SimpleQueue = queue.SimpleQueue()
        self._topic = f"gflow-started-{uuid.uuid4().hex[:12]}"
        self._subscribed = False
        self._info: dict[bool, tuple[float, dict[str, Any]]] = {}
        self._warned: set[str] = set()
        self._importable_cache: dict[str, str | None] = {}
        self._artifacts_url: str | None = None
        self._closed = False
        self._gatherer: threading.Thread | None = None
        self._live: dict[str, _Handle] = {}  # dask key -> handle, for the start watcher
        self._watcher: threading.Thread | None = None
        self.start_poll_interval = 1.0

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> DaskExecutor:
        """``dask`` / ``dask://?n_workers=2&threads_per_worker=1`` (LocalCluster) or
        ``dask://host:8786?timeout=5`` (existing scheduler); profile settings are the same keywords."""
        return cls(**{**settings, **parse_spec(spec)})

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, listener: Any) -> None:
        """Called by the engine before its first submit (again for each run that reuses this executor)."""
        super().start(listener)
        if not self._subscribed:
            self.client.subscribe_topic(self._topic, self._on_started_event)
            self._subscribed = True
        if self._gatherer is None:
            self._gatherer = threading.Thread(target=self._gather_loop, name="gflow-dask-gather", daemon=True)
            self._gatherer.start()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_starts, name="gflow-dask-starts", daemon=True)
            self._watcher.start()

    def _watch_starts(self) -> None:
        """Once a second, ask the scheduler which calls are processing on a worker and report those as
        started: long tasks show RUNNING live, at one scheduler call per second, not a message per task."""
        while not self._closed:
            time.sleep(self.start_poll_interval)
            if not self._live or self._closed:
                continue
            try:
                processing = self.client.processing()
            except Exception:  # noqa: BLE001 - the outcome still reports the start
                continue
            now = time.time()
            for keys in processing.values():
                for key in keys:
                    h = self._live.get(key)
                    if h is not None and not h.started and not h.state.terminal:
                        h.started = True
                        self._listener(CallStarted(h.call_id, h.attempt, now))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._done_q.put(None)
        if self._subscribed:
            try:
                self.client.unsubscribe_topic(self._topic)
            except Exception:  # noqa: BLE001 - the client may already be gone
                pass
        if self._owns_client:
            try:
                self.client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()

    # -- the interface -------------------------------------------------------------------------------
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        if self._closed:
            raise ExecutorError("the Dask executor is closed")
        groups: dict[tuple, list[int]] = {}
        declared = self._declared_resources() if any(_needs_info(c) for c in calls) else set()
        requests: list[dict[str, float]] = []
        for i, c in enumerate(calls):
            req = _resource_request(c, declared) if _needs_info(c) else {}
            requests.append(req)
            groups.setdefault((id(c.task), tuple(sorted(req.items()))), []).append(i)
        handles: list[Any] = [None] * len(calls)
        with self._lock:
            self._in_flight += len(calls)
        for idx in groups.values():
            group = [calls[i] for i in idx]
            hs = self._submit_group(group, requests[idx[0]])
            for i, h in zip(idx, hs):
                handles[i] = h
        return handles

    def _submit_group(self, calls: list[Call], resources: dict[str, float]) -> list[_Handle]:
        task = calls[0].task
        keys = [_dask_key(c) for c in calls]
        handles = [_Handle(k, c.id, c.attempt) for k, c in zip(keys, calls)]
        problem = self._importable(task) or (self._unsatisfiable(resources) if resources else None)
        if problem is not None:
            self._fail_now(calls, handles, ExecutorError(problem if problem.startswith("task '")
                                                         else f"task '{task.name}': {problem}"))
            return handles
        if any(c.refs for c in calls):
            return self._submit_speculative(calls, handles, resources)
        try:
            payloads = [pickle.dumps((c.args, c.kwargs), protocol=5) for c in calls]
            common: dict[str, Any] = {"task": self._task_blob(task)}
            if task.options.timeout:  # the timeout counts from the start: the worker reports it
                common["topic"] = self._topic
                futures = self.client.map(_run_reporting_start, payloads, [c.id for c in calls],
                                          [c.attempt for c in calls], key=keys, pure=False,
                                          resources=resources or None, **common)
            else:
                futures = self.client.map(_run_on_worker, payloads, key=keys, pure=False,
                                          resources=resources or None, **common)
        except Exception as e:  # noqa: BLE001 - e.g. an argument that does not pickle: fail this group only
            self._fail_now(calls, handles, ExecutorError(f"task '{task.name}': could not submit to Dask: "
                                                         f"{type(e).__name__}: {e}"), traceback.format_exc())
            return handles
        on_done = self._on_done
        # calls with a timeout report their real start from the worker; "processing" on the scheduler
        # may still mean queued behind another call there, so the watcher leaves those alone
        live = self._live if not task.options.timeout else {}
        for h, f in zip(handles, futures):
            h.future = f
            live[h.key] = h
            f.add_done_callback(lambda fut, h=h: on_done(h, fut))
        return handles

    def _submit_speculative(self, calls: list[Call], handles: list[_Handle],
                            resources: dict[str, float]) -> list[_Handle]:
        """Calls whose inputs are still running here: one ``client.submit`` each, the inputs' Dask
        futures as arguments (Dask moves the data worker to worker; the driver is not in the loop)."""
        task_blob = self._task_blob(calls[0].task)
        on_done = self._on_done
        for c, h in zip(calls, handles):
            h.speculative = True
            ids = list(c.refs)
            futures = [getattr(c.refs[i], "future", None) for i in ids]
            if any(f is None for f in futures):  # an input was already collected and released
                self._finish(h, Outcome(False, error_type=UPSTREAM_PENDING, ended=time.time()))
                continue
            try:
                f = self.client.submit(_run_with_refs, pickle.dumps((c.args, c.kwargs), protocol=5), ids, *futures,
                                       key=h.key, pure=False, resources=resources or None, task=task_blob)
            except Exception:  # noqa: BLE001 - e.g. an argument that does not pickle: the ordinary path decides
                self._finish(h, Outcome(False, error_type=UPSTREAM_PENDING, ended=time.time()))
                continue
            h.future = f
            self._live[h.key] = h
            f.add_done_callback(lambda fut, h=h: on_done(h, fut))
        return handles

    def attach_artifacts(self, artifacts: Any) -> None:
        """Workers get the run's artifact store URL with each task (task code such as gflow.models uses it)."""
        self._artifacts_url = getattr(artifacts, "url", None)

    def _task_blob(self, task: Any) -> bytes:
        return pickle.dumps((task, self._artifacts_url), protocol=5)

    def _importable(self, task: Any) -> str | None:
        if task.identity not in self._importable_cache:
            self._importable_cache[task.identity] = importable_problem(task)
        return self._importable_cache[task.identity]

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        """States only: outcomes reach the engine through the listener."""
        out = []
        for h in handles:
            f = h.future
            if f is None or h.state.terminal:
                out.append(JobStatus(h.state))
                continue
            st = f.status
            out.append(JobStatus(State.SUCCEEDED if st == "finished" else State.FAILED if st == "error"
                                 else State.CANCELLED if st == "cancelled" else h.state))
        return out

    def cancel(self, handles: Sequence[Any]) -> None:
        futures = []
        with self._lock:
            for h in handles:
                if h is None or h.cancelled or h.state.terminal:
                    continue
                h.cancelled = True
                h.state = State.CANCELLED
                self._live.pop(h.key, None)
                self._in_flight -= 1
                if h.future is not None:
                    futures.append(h.future)
                    h.future = None
        if futures and not self._closed:
            self.client.cancel(futures)

    def capacity(self) -> int:
        limit = self._max_in_flight
        if limit is None:
            limit = max(1000, 200 * self._cluster_info().get("n_workers", 0))
        return limit - self._in_flight

    def describe_handle(self, handle: Any) -> str:
        return handle.key if isinstance(handle, _Handle) else str(handle)

    # -- completion ------------------------------------------------------------------------------------
    def _on_done(self, handle: _Handle, fut: Any) -> None:
        # Dask's callback thread: only hand over; the gatherer batches the round-trips
        self._done_q.put((handle, fut))

    def _on_started_event(self, event: tuple) -> None:
        call_id, attempt, ts = event[1]
        self._listener(CallStarted(call_id, attempt, ts))

    def _gather_loop(self) -> None:
        q = self._done_q
        while True:
            item = q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _GATHER_BATCH:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    q.put(None)
                    break
                batch.append(item)
            try:
                self._report(batch)
            except BaseException:  # noqa: BLE001 - never let the gatherer die: the engine would wait forever
                log.exception("gflow dask executor: reporting %d outcomes failed", len(batch))
                tb = traceback.format_exc()
                for h, _ in batch:
                    self._finish(h, Outcome(False, error_type="gflow.errors.ExecutorError",
                                            error_message="collecting the outcome from Dask failed",
                                            traceback=tb, ended=time.time()))

    def _report(self, batch: list[tuple[_Handle, Any]]) -> None:
        finished: list[tuple[_Handle, Any]] = []
        for h, fut in batch:
            if h.cancelled:
                continue  # cancelled by the engine (cancel or timeout): already accounted for
            st = fut.status
            if st == "finished":
                finished.append((h, fut))
            elif st == "error" and h.speculative:  # most likely an input's worker died: rerun the ordinary way
                self._finish(h, Outcome(False, error_type=UPSTREAM_PENDING, ended=time.time()))
            elif st == "error":
                self._finish(h, _dask_failure(h, fut.exception(), fut.traceback()))
            else:  # cancelled by the cluster (scheduler restart, another client): a failed attempt
                self._finish(h, _dask_failure(h, ExecutorError(
                    f"Dask cancelled {h.key} ({st}); the scheduler may have restarted"), None))
        if not finished or self._closed:
            return
        try:
            outcomes = self.client.gather([f for _, f in finished])
        except BaseException:  # noqa: BLE001 - incl. CancelledError: one bad result must not fail the batch
            outcomes = [self._gather_one(h, f) for h, f in finished]
        for (h, _), out in zip(finished, outcomes):
            self._finish(h, out)

    def _gather_one(self, h: _Handle, f: Any) -> Outcome:
        try:
            return f.result()
        except BaseException as e:  # noqa: BLE001 - e.g. the Outcome did not pickle on the worker
            return Outcome.from_exception(ExecutorError(
                f"the result of {h.key} could not be brought back from the Dask worker: {type(e).__name__}: {e}"),
                traceback.format_exc(), None, time.time())

    def _finish(self, h: _Handle, out: Outcome) -> None:
        with self._lock:
            if h.cancelled or h.state.terminal:
                return
            h.state = State.SUCCEEDED if out.ok else State.FAILED
            h.future = None  # releases the key on the cluster
            self._live.pop(h.key, None)
            self._in_flight -= 1
            started, h.started = h.started, True
        listener = self._listener
        if not started:  # the outcome's start, where neither the watcher nor the worker's event told it
            listener(CallStarted(h.call_id, h.attempt, out.started or out.ended or time.time()))
        listener(CallDone(h.call_id, h.attempt, out))

    def _fail_now(self, calls: list[Call], handles: list[_Handle], e: BaseException, tb: str = "") -> None:
        for h in handles:
            self._finish(h, Outcome.from_exception(e, tb, None, time.time()))

    # -- cluster facts --------------------------------------------------------------------------------
    def _cluster_info(self, workers: bool = False) -> dict[str, Any]:
        """The scheduler's identity, at most ``_INFO_TTL`` seconds old (per-worker details if asked)."""
        now = time.monotonic()
        at, info = self._info.get(workers, (0.0, {}))
        if now - at > _INFO_TTL and not self._closed:
            try:
                info = self.client.scheduler_info(n_workers=-1 if workers else 0)
            except Exception:  # noqa: BLE001 - keep the last known picture
                log.debug("scheduler_info failed", exc_info=True)
            self._info[workers] = (now, info)
        return info

    def _declared_resources(self) -> set[str]:
        return {r for w in self._cluster_info(True).get("workers", {}).values() for r in (w.get("resources") or {})}

    def _unsatisfiable(self, resources: dict[str, float]) -> str | None:
        """Why no worker can run a call needing ``resources``; None if one can (or one may join)."""
        workers = self._cluster_info(True).get("workers", {})
        if any(all((w.get("resources") or {}).get(r, 0) >= n for r, n in resources.items())
               for w in workers.values()):
            return None
        offered = sorted({f"{r}={n}" for w in workers.values() for r, n in (w.get("resources") or {}).items()})
        why = (f"no Dask worker offers resources {resources} (workers offer: {', '.join(offered) or 'none'}); "
               f"start workers with e.g. `dask worker ... --resources GPU=1`")
        if self._cluster is not None:
            return why  # our own fixed-size cluster: nothing will ever join
        if why not in self._warned:
            self._warned.add(why)
            log.warning("%s; the calls wait until such a worker joins", why)
        return None


def _needs_info(call: Call) -> bool:
    res = call.task.options.resources
    return bool(res.gpu or res.memory)


def _dask_failure(h: _Handle, exc: BaseException | None, tb: Any) -> Outcome:
    exc = exc if exc is not None else ExecutorError(f"Dask reported {h.key} as failed")
    text = "".join(traceback.format_tb(tb)) if tb is not None else ""
    out = Outcome.from_exception(exc, f"{type(exc).__name__} on the Dask cluster for {h.key}: {exc}\n{text}",
                                 None, time.time())
    return out


def _connect(address: str, timeout: float) -> Any:
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001 - translate at the boundary
        raise ExecutorError(f"cannot reach the Dask scheduler at {address} within {timeout:g}s "
                            f"({type(e).__name__}: {e})") from None


def _local_cluster(n_workers: int, threads_per_worker: int, memory_limit: str | int, allowed_failures: int,
                   protocol: str | None) -> Any:
    from dask.utils import parse_bytes
    from distributed.system import MEMORY_LIMIT

    if memory_limit == "auto":
        per_worker = MEMORY_LIMIT // n_workers
    else:
        per_worker = parse_bytes(memory_limit) if isinstance(memory_limit, str) else int(memory_limit)
    kw: dict[str, Any] = {"protocol": protocol} if protocol else {}
    try:
        return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                        memory_limit=per_worker, resources={"MEMORY": per_worker},
                                        dashboard_address=":0", scheduler_kwargs={"allowed_failures": allowed_failures},
                                        **kw)
    except Exception as e:  # noqa: BLE001
        raise ExecutorError(f"could not start a Dask LocalCluster ({type(e).__name__}: {e})") from e
