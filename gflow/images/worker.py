"""``gflow worker``: run one call spec (or one element of an array spec) and record its outcome.

Steps, each named in a failure's ``stage``: read the spec; unpack the code bundle if it names one
(dev mode); import the task by path; check its version against the spec; read the inputs; run;
write the output blob; write the outcome record to the spec's outcome slot. The exit code tells
the backend how it went: 0 success, 1 the task raised, 2 the worker could not run the call (bad
spec, unknown task, version mismatch, unreadable inputs) -- an outcome record is written in every
case where the artifact store is reachable. An element of a paged array spec may run several calls
(a chunk); each gets its own outcome record, and the exit code is the worst of theirs.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Mapping
from typing import Any

from gflow.images.errors import TaskVersionMismatch, WorkerError
from gflow.images.protocol import (
    ARRAY,
    ARRAY_PAGED,
    EXIT_OK,
    EXIT_TASK_FAILED,
    EXIT_WORKER_ERROR,
    RESULT_INLINE_MAX,
    element_calls,
    elements,
    read_spec,
    write_outcome,
)

INDEX_VARS = ("AWS_BATCH_JOB_ARRAY_INDEX", "VC_TASK_INDEX", "SLURM_ARRAY_TASK_ID", "BATCH_TASK_INDEX")
#: an array child's job id is ``<array job id>:<index>`` (moto sets only this, not the index variable)
_CHILD_JOB_ID = re.compile(r"^[^:]+:(\d+)$")


def array_index(explicit: int | None = None, environ: Mapping[str, str] | None = None) -> int | None:
    """The element index: ``--index``, else the backend's environment variable, else the suffix of
    ``AWS_BATCH_JOB_ID`` for an array child (``<array job id>:<index>``), else None."""
    if explicit is not None:
        return explicit
    env = os.environ if environ is None else environ
    for var in INDEX_VARS:
        v = env.get(var)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                raise WorkerError(f"{var}={v!r} is not an integer") from None
    m = _CHILD_JOB_ID.match(env.get("AWS_BATCH_JOB_ID") or "")
    return int(m.group(1)) if m else None


def unpack_bundle(artifacts: Any, digest: str) -> list[str]:
    """Unpack a dev-mode code bundle (once per container) and put its roots first on sys.path."""
    dest = os.path.join(tempfile.gettempdir(), "gflow-bundles", digest.replace(":", "-"))
    if not os.path.isdir(dest):
        tmp = f"{dest}.{os.getpid()}"
        with tarfile.open(fileobj=io.BytesIO(artifacts.get(digest))) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Pythons before 3.11.4; the bundle is gflow's own content-addressed tar
                tar.extractall(tmp)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            os.replace(tmp, dest)
        except OSError:  # another worker in the same container won
            pass
    with open(os.path.join(dest, "gflow-bundle.json")) as f:
        manifest = json.load(f)
    paths = [os.path.join(dest, p) for p in manifest["pythonpath"]]
    sys.path[:0] = [p for p in paths if p not in sys.path]  # calls of one array element share a bundle
    return paths


def _load_task(spec: dict) -> Any:
    from gflow._resolve import import_task_object
    from gflow.errors import SerializationError
    from gflow.tasks import Task

    try:  # imports the task's module only (the image's code) and looks the name up without calling anything
        task = import_task_object(spec["task"])
    except SerializationError as e:
        raise WorkerError(f"cannot load task {spec['task'][:200]!r}: {e}") from None
    except Exception as e:
        raise WorkerError(f"cannot import task {spec['task']} in this image: {type(e).__name__}: {e}") from e
    if not isinstance(task, Task):
        raise WorkerError(f"{spec['task']} is a {type(task).__name__}, not a gflow task")
    if task.version != spec["version"]:
        raise TaskVersionMismatch(
            f"task '{spec.get('name', spec['task'])}' ({spec['task']}) in this image is version {task.version}, "
            f"but the call was made with version {spec['version']}: the image holds other code than the "
            f"driver; rebuild the image (gflow build) or replay with the image the run recorded")
    return task


def _allow_pickle(spec: dict, task: Any) -> bool:
    """Pickle only when the task's own code opted in (``pickle=True``) and the spec agrees; the spec alone,
    read from the store, never turns it on."""
    return spec.get("pickle") is True and bool(task.options.pickle)


def _read_inputs(artifacts: Any, spec: dict, task: Any, inline: dict[str, bytes] | None = None) -> tuple[list, dict]:
    from gflow.errors import SerializationError
    from gflow.serialization import decode

    data = (inline or {}).get(spec["inputs"])  # carried by an array page, checked against its digest there
    inputs = decode(data if data is not None else artifacts.get(spec["inputs"]), artifacts.get,
                    allow_pickle=_allow_pickle(spec, task),
                    where=f"inputs of task '{task.name}'")
    if type(inputs) is not dict or type(inputs.get("args")) is not list or type(inputs.get("kwargs")) is not dict \
            or not all(type(k) is str for k in inputs["kwargs"]):
        raise SerializationError(f"inputs of task '{task.name}' are not {{'args': [...], 'kwargs': {{...}}}}")
    return inputs["args"], inputs["kwargs"]


def run_spec(artifacts: Any, spec_digest: str, index: int | None = None) -> int:
    """Run a call spec (or element ``index`` of an array spec); returns the exit code."""
    started = time.time()
    spec: dict = {}
    try:
        spec = read_spec(artifacts, spec_digest)
        calls: list[tuple[str, dict, dict[str, bytes]]]
        if spec["kind"] in (ARRAY, ARRAY_PAGED):
            n = elements(spec)
            if index is None:
                raise WorkerError(f"{spec_digest} is an array spec of {n} elements; give --index or "
                                  f"set one of {', '.join(INDEX_VARS)}")
            if not 0 <= index < n:
                raise WorkerError(f"index {index} is outside the array spec {spec_digest} ({n} elements)")
            if spec["kind"] == ARRAY_PAGED:
                calls = element_calls(artifacts, spec, index)
            else:
                spec_digest = spec["calls"][index]
                spec = read_spec(artifacts, spec_digest)
                calls = [(spec_digest, spec, {})]
        else:
            calls = [(spec_digest, spec, {})]
    except BaseException as e:  # noqa: BLE001 - becomes the outcome record
        _fail(artifacts, spec_digest, spec, "spec", e, started)
        return EXIT_WORKER_ERROR
    if len(calls) > 1:
        return _run_packed(artifacts, calls)
    return max([_run_call(artifacts, d, s, inline) for d, s, inline in calls])


def _prepare(artifacts: Any, spec_digest: str, spec: dict, inline: dict[str, bytes]) -> tuple[Any, list, dict] | int:
    """The task and inputs of one call spec, or the exit code after recording why they cannot be had."""
    started = time.time()
    stage = "spec"
    try:
        if spec.get("bundle"):
            stage = "bundle"
            unpack_bundle(artifacts, spec["bundle"])
        stage = "import"
        task = _load_task(spec)
        stage = "inputs"
        args, kwargs = _read_inputs(artifacts, spec, task, inline)
    except BaseException as e:  # noqa: BLE001 - becomes the outcome record
        _fail(artifacts, spec_digest, spec, stage, e, started)
        return EXIT_WORKER_ERROR
    return task, args, kwargs


def _run_call(artifacts: Any, spec_digest: str, spec: dict, inline: dict[str, bytes]) -> int:
    """Run one checked call spec whose document is in hand (``inline``: inputs carried by an array page)."""
    prep = _prepare(artifacts, spec_digest, spec, inline)
    if isinstance(prep, int):
        return prep
    return _run_prepared(artifacts, spec_digest, spec, *prep)


def _run_packed(artifacts: Any, calls: list[tuple[str, dict, dict[str, bytes]]]) -> int:
    """Run the calls of one packed array element in this process (they share ``@gflow.warm`` values). Calls
    of a ``batch_size`` task are grouped into batches; every other call runs alone, one after another, its
    outcome written as soon as it ends (a job killed midway loses only the calls it had not finished)."""
    codes: list[int] = []
    batch: list[tuple[str, dict, Any, list, dict]] = []
    for d, s, inline in calls:
        prep = _prepare(artifacts, d, s, inline)
        if isinstance(prep, int):
            codes.append(prep)
        elif prep[0].options.batch_size is None:
            codes.append(_run_prepared(artifacts, d, s, *prep))
        else:
            batch.append((d, s, *prep))
    if batch:
        codes += _run_batch(artifacts, batch)
    return max(codes)


def _run_prepared(artifacts: Any, d: str, s: dict, task: Any, args: list, kwargs: dict) -> int:
    from gflow._context import run_artifacts
    from gflow.usage import process_meter

    meter = process_meter()  # the worker process runs one call at a time: usage is the process's
    t_run = meter.t0
    token = run_artifacts.set(artifacts)  # task code (gflow.models) uses the run's artifact store
    try:
        value = task.invoke(args, kwargs)
    except BaseException as e:  # noqa: BLE001 - becomes the outcome record
        _fail(artifacts, d, s, "run", e, t_run, usage=meter.stop(task))
        return EXIT_TASK_FAILED
    finally:
        run_artifacts.reset(token)
    return _record(artifacts, d, s, task, value, t_run, meter.stop(task))


def _run_batch(artifacts: Any, batch: list[tuple[str, dict, Any, list, dict]]) -> list[int]:
    """Calls of ``batch_size`` tasks, grouped per task into batches (``Task.invoke_many``)."""
    from gflow._context import run_artifacts
    from gflow.usage import process_meter

    codes: list[int] = []
    by_task: dict[str, list[tuple[str, dict, Any, list, dict]]] = {}
    for item in batch:
        by_task.setdefault(item[2].identity, []).append(item)
    for items in by_task.values():
        task = items[0][2]
        meter = process_meter()
        t_run = meter.t0
        token = run_artifacts.set(artifacts)
        try:
            results = task.invoke_many([(tuple(a), k) for _d, _s, _t, a, k in items])
        finally:
            run_artifacts.reset(token)
        usage = {**meter.stop(task), "batch": len(items)}  # one measurement, shared by the batch's calls
        for (d, s, _t, _a, _k), r in zip(items, results, strict=True):
            if r.ok:
                codes.append(_record(artifacts, d, s, task, r.value, t_run, usage))
            else:
                _fail(artifacts, d, s, "run", r.exc, t_run, r.tb, usage=usage)
                codes.append(EXIT_TASK_FAILED)
    return codes


def _record(artifacts: Any, spec_digest: str, spec: dict, task: Any, value: Any, t_run: float,
            usage: dict | None = None) -> int:
    """Write a call's output blob and its success record."""
    stage = "output"
    try:
        from gflow.serialization import encode

        enc = encode(value, allow_pickle=_allow_pickle(spec, task), where=f"result of task '{task.name}'")
        artifacts.put_many(enc.blobs)
        result = artifacts.put(enc.data, enc.digest)
        record = {"ok": True, "result": result, "started": t_run, "ended": time.time(), **_where(spec)}
        if usage is not None:
            record["usage"] = usage
        if len(enc.data) <= RESULT_INLINE_MAX:
            record["result_data"] = enc.data.decode()  # the driver reads one document instead of two
        write_outcome(artifacts, spec_digest, record)
    except BaseException as e:  # noqa: BLE001
        _fail(artifacts, spec_digest, spec, stage, e, t_run, usage=usage)
        return EXIT_TASK_FAILED
    print(json.dumps({"gflow.outcome": "ok", "spec": spec_digest, "result": result}), flush=True)
    return EXIT_OK


def _where(spec: dict) -> dict:
    from gflow import __version__

    return {"task": spec.get("task"), "version": spec.get("version"), "host": socket.gethostname(),
            "gflow": __version__}


def _fail(artifacts: Any, spec_digest: str, spec: dict, stage: str, e: BaseException | None, started: float,
          tb: str | None = None, usage: dict | None = None) -> None:
    from gflow.executors.base import qualname

    tb = traceback.format_exc() if tb is None else tb
    record = {"ok": False, "stage": stage, "error_type": qualname(type(e)), "error_message": str(e),
              "traceback": tb, "started": started, "ended": time.time(), **_where(spec)}
    if usage is not None:
        record["usage"] = usage
    print(f"gflow worker: {stage} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    print(tb, file=sys.stderr, flush=True)
    try:
        write_outcome(artifacts, spec_digest, record)
    except Exception as w:  # noqa: BLE001 - the exit code and stderr still tell
        print(f"gflow worker: cannot write the outcome record: {w}", file=sys.stderr, flush=True)
