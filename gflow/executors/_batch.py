"""What the batch backends (AWS Batch, Volcano) share, in one place: array manifests (a fan-out as one
array spec in the artifact store), chunking a batch into arrays, the index a worker reads, and turning
a child's outcome record into an :class:`~gflow.executors.base.Outcome`.

A fan-out of N calls of one task becomes ``ceil(N / max_children)`` arrays. Each array is one
*array spec* (``gflow.images.protocol.write_array_spec``) listing one call spec per child; child ``i``
runs ``gflow worker ARRAY_DIGEST`` with its index in ``AWS_BATCH_JOB_ARRAY_INDEX`` or ``VC_TASK_INDEX``
(``gflow.images.worker.INDEX_VARS``) and writes its outcome record to the outcome slot of its own call
spec, where the driver reads it.

Very large fan-outs use a *paged* array spec instead (:func:`write_paged_manifest`): the call specs
travel inline in pages of ``page_size`` (with small inputs inline too), so a fan-out of 10,000 is
about a hundred stored documents rather than twenty thousand, and ``chunk`` calls can share one
child. :func:`split_sizes` spreads children over arrays of at most ``max_children``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gflow.errors import ConfigError, ExecutorError
from gflow.executors.base import Call, JobStatus, Outcome
from gflow.images.worker import INDEX_VARS

__all__ = ["INDEX_VARS", "Manifest", "RunArtifacts", "PagedManifest", "CloudBatch", "adopt", "backend_failure",
           "child_outcome", "chunk", "ensure_in_registry", "group_by_task", "outcome_of", "per_job", "split_sizes",
           "with_worker_package", "write_manifest", "write_paged_manifest"]


class RunArtifacts:
    """The artifact store a container backend (Docker, AWS Batch, Volcano) hands its workers.

    ``artifacts=`` given to the executor (a store or a URL) wins; otherwise the engine attaches the
    run's store; otherwise the profile's store is opened on first use.
    """

    _artifacts: Any = None
    _artifacts_explicit: bool = False

    @property
    def artifacts(self) -> Any:
        if self._artifacts is None or isinstance(self._artifacts, str):
            from gflow.artifacts import open_artifacts
            from gflow.config import load_profile

            self._artifacts = open_artifacts(self._artifacts or load_profile().artifacts)
        return self._artifacts

    def _use_artifacts(self, artifacts: Any) -> None:
        """The constructor's ``artifacts=`` (a store, a URL, or None for the run's or the profile's)."""
        self._artifacts = artifacts
        self._artifacts_explicit = artifacts is not None

    def attach_artifacts(self, artifacts: Any) -> None:
        """Use the run's artifact store (the engine calls this; explicit ``artifacts=`` wins)."""
        if not self._artifacts_explicit:
            self._artifacts = artifacts
            self._artifacts_attached()

    def _artifacts_attached(self) -> None:
        """Hook: the store changed (a backend that checked the old one forgets that check)."""


def chunk(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive pieces of at most ``size`` (``size`` >= 1)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def per_job(task: Any, n: int, default: int, max_children: int) -> int:
    """Calls per array child for a fan-out of ``n`` calls of ``task``: the task's ``per_job`` if set (``map(xs,
    per_job=K)``), else the executor's ``chunk`` raised just enough that the fan-out fits one array of
    ``max_children`` children (AWS Batch 10,000, GCP Batch 100,000 tasks, Slurm's MaxArraySize)."""
    k = getattr(task.options, "per_job", None)
    if k is not None:
        return int(k)
    return max(default, -(-n // max_children)) if n > 0 else default


def group_by_task(calls: Sequence[Call]) -> list[list[Call]]:
    """Calls grouped by task (and options), keeping their order: each group can become one array."""
    groups: dict[int, list[Call]] = {}
    for c in calls:
        groups.setdefault(id(c.task), []).append(c)
    return list(groups.values())


@dataclass
class Manifest:
    """One array: its array spec digest and the call spec digest of each child (by index)."""

    array: str
    specs: list[str]
    calls: list[Call] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.specs)


def write_manifest(artifacts: Any, calls: Sequence[Call], *, image: str | None = None,
                   bundle: str | None = None) -> Manifest:
    """Write a call spec per call and one array spec listing them (in order).

    Raises:
        SerializationError: naming the task when an input has no canonical form.
    """
    from gflow.images.protocol import write_array_spec, write_call_spec

    specs = [write_call_spec(artifacts, c, image=image, bundle=bundle) for c in calls]
    return Manifest(write_array_spec(artifacts, specs), specs, list(calls))


def outcome_of(artifacts: Any, spec_digest: str, *, allow_pickle: bool = False) -> Outcome | None:
    """The outcome of a child from its outcome record, or None if the worker wrote none (yet).

    A successful outcome carries ``result_ref``: the engine records that digest as is. ``allow_pickle``:
    the call's task opted into (signed) pickles."""
    from gflow.images.protocol import read_outcome, to_outcome

    rec = read_outcome(artifacts, spec_digest)
    return None if rec is None else to_outcome(artifacts, rec, allow_pickle=allow_pickle)


def child_outcome(artifacts: Any, spec_digest: str, info: dict[str, Any] | None = None, *,
                  allow_pickle: bool = False) -> Outcome | None:
    """:func:`outcome_of` with the backend's details (job, pod, node, exit code) attached as ``info``;
    None while the child has written no outcome record. A child is never reported successful without one."""
    out = outcome_of(artifacts, spec_digest, allow_pickle=allow_pickle)
    if out is not None and info:
        out.info = {**(out.info or {}), **info}
    return out


def backend_failure(error_type: str, message: str, *, info: dict[str, Any] | None = None, log_tail: str = "",
                    started: float | None = None, ended: float | None = None) -> Outcome:
    """The outcome of a child that ended (or was given up) without an outcome record: the backend's reason
    (evicted, unschedulable, image pull, out of memory, deleted) as one line naming the fix; ``log_tail``,
    the end of the child's log where the backend kept it, stands in for the traceback. ``error_type`` is
    recorded as given; the outcome's class is the one it names (:func:`gflow.errors.error_class`, which
    knows the backends' names through the one map), else :class:`~gflow.errors.ExecutorError`."""
    from gflow.errors import ExecutorError, error_class
    from gflow.executors.polling import failed

    cls = error_class(error_type)
    return failed(cls if cls is not None else ExecutorError, message, info=info, log_tail=log_tail, started=started,
                  ended=ended, error_type=error_type)


def split_sizes(n: int, max_size: int) -> list[int]:
    """Sizes of ``ceil(n / max_size)`` parts, as equal as possible (so a part of 1 only when ``n`` is 1):
    10,001 children with arrays of at most 10,000 are 5,001 + 5,000, never 10,000 + 1."""
    if n < 0 or max_size < 1:
        raise ValueError(f"cannot split {n} into parts of at most {max_size}")
    if n == 0:
        return []
    parts = -(-n // max_size)
    base, extra = divmod(n, parts)
    return [base + 1] * extra + [base] * (parts - extra)


@dataclass
class PagedManifest(Manifest):
    """A paged array (``gflow.array/v2``): ``specs`` holds each call's spec digest (its outcome slot's
    key), by call position; element ``i`` runs calls ``i*chunk .. (i+1)*chunk - 1``."""

    chunk: int = 1

    @property
    def elements(self) -> int:
        return -(-len(self.specs) // self.chunk)

    def calls_of(self, element: int) -> range:
        """Call positions that element ``element`` runs."""
        return range(element * self.chunk, min(len(self.specs), (element + 1) * self.chunk))


def write_paged_manifest(artifacts: Any, calls: Sequence[Call], *, image: str | None = None,
                         bundle: str | None = None, chunk: int = 1, page_size: int = 100,
                         inline_max: int = 16384) -> PagedManifest:
    """Store a paged array spec for ``calls`` (in order) with one ``put_many``: the pages, the array
    spec, typed blobs, and inputs larger than ``inline_max`` bytes (smaller ones ride in the pages).

    Raises:
        SerializationError: naming the task when an input has no canonical form.
    """
    from gflow.images.protocol import encode_call_spec, paged_array_blobs, spec_digest

    specs: list[dict] = []
    blobs: dict[str, bytes] = {}
    inline: dict[str, bytes] = {}
    for c in calls:
        spec, b = encode_call_spec(c, image=image, bundle=bundle)
        data = b.pop(spec["inputs"])
        (inline if len(data) <= inline_max else blobs)[spec["inputs"]] = data
        blobs.update(b)
        specs.append(spec)
    array, docs = paged_array_blobs(specs, inline, chunk=chunk, page_size=page_size)
    blobs.update(docs)
    artifacts.put_many(blobs)
    return PagedManifest(array, [spec_digest(s) for s in specs], list(calls), chunk=chunk)


@dataclass
class Placed:
    """Where a dead driver's call runs in a job it submitted (what ``reattach`` follows): the array element, the
    position in the element's chunk, and the call spec digest that names its outcome slot."""

    element: int
    pos: int
    spec: str
    chunk: int = 1


def placed_calls(artifacts: Any, digest: str) -> dict[str, Placed]:
    """The calls a job's spec ``digest`` runs (a call spec, or a plain or paged array spec), by the call id each
    call spec names. Stored data is untrusted: a malformed spec or page raises SerializationError.

    Raises:
        SerializationError, ArtifactNotFound.
    """
    from gflow.errors import SerializationError
    from gflow.images.protocol import ARRAY, ARRAY_PAGED, PAGE, read_spec, spec_digest

    spec = read_spec(artifacts, digest)
    out: dict[str, Placed] = {}
    kind = spec.get("kind")
    if kind == ARRAY_PAGED:
        chunk, size = int(spec["chunk"]), int(spec["size"])
        j = 0
        for page_digest in spec["pages"]:
            page = read_json(artifacts, page_digest)
            calls = page.get("calls")
            if page.get("kind") != PAGE or type(calls) is not list:
                raise SerializationError(f"{page_digest} is not a gflow array page")
            for call in calls:
                if j >= size:
                    break
                if type(call) is dict and type(call.get("call_id")) is str:
                    out[call["call_id"]] = Placed(j // chunk, j % chunk, spec_digest(call), chunk)
                j += 1
    elif kind == ARRAY:
        for i, d in enumerate(spec["calls"]):
            call = read_spec(artifacts, d)
            if type(call.get("call_id")) is str:
                out[call["call_id"]] = Placed(i, 0, d)
    elif type(spec.get("call_id")) is str:
        out[spec["call_id"]] = Placed(0, 0, digest)
    return out


def read_json(artifacts: Any, digest: str) -> dict:
    """A JSON object stored under ``digest`` (checked against it by the store)."""
    import json

    from gflow.errors import SerializationError

    try:
        obj = json.loads(artifacts.get(digest))
    except ValueError as e:
        raise SerializationError(f"{digest} is not JSON: {e}") from e
    if type(obj) is not dict:
        raise SerializationError(f"{digest} is not a JSON object")
    return obj


def with_worker_package(image: Any, package: str) -> Any:
    """``image`` plus the distribution ``package`` a batch worker needs (``boto3``, ``google-cloud-storage``),
    unless its packages already list it."""
    from gflow.images.lock import parse_requirement

    names = set()
    for p in image.packages:
        try:
            names.add(parse_requirement(p)[0])
        except ValueError:
            continue
    return image if package in names else image.with_packages(package)


def ensure_in_registry(builder: Callable[[], Any], ctx: Any, registry: str, *, build: bool, in_registry: Any,
                       log: Any) -> str:
    """Make an image context available in ``registry`` and return the reference workers pull: with ``build``
    off it must already be there (``in_registry(tag, registry)``, else ImageError with the fix); otherwise
    the builder (``builder()``, only made when building) builds and pushes it if absent."""
    from gflow.images.builders import with_registry
    from gflow.images.errors import ImageError

    if not build:
        if not in_registry(ctx.tag, registry):
            raise ImageError(f"image {ctx.tag} is not in {registry} and building is off (build=0); "
                             f"run 'gflow build --push {registry}' first")
        return with_registry(ctx.tag, registry)
    res = builder().ensure(ctx, registry=registry, push=True)
    if res.built:
        log.info("built %s in %.1fs", ctx.tag, res.seconds)
    return with_registry(ctx.tag, registry)


def adopt(ex: Any, handles: Sequence[Any], jobs: Any) -> list[Any]:
    """The last step of reattaching to a batch backend's jobs: count the adopted handles (those not None) as
    in flight on ``ex``, give ``ex.monitor`` the jobs, have it track the handles; returns the adopted ones."""
    adopted = [h for h in handles if h is not None]
    with ex._lock:
        ex._in_flight += len(adopted)
    for job in jobs:
        ex.monitor.add(job)
    if adopted:
        ex.monitor.track(adopted)
    return adopted


class CloudBatch(RunArtifacts):
    """What the cloud batch executors (AWS Batch, Google Cloud Batch) share: the artifact-store check, the
    image of a task, and the in-flight count. A subclass names itself in ``_label``, the artifact URL scheme
    its workers reach in ``_store_scheme``, the error for any other store in ``_store_refused`` (formatted
    with ``url``), its handle class in ``_handle_type``, and sets ``images``, ``monitor``, ``max_in_flight``,
    ``handler``, ``_lock``, ``_in_flight``, ``_artifacts_ok``, ``_flow_name``, ``_flow_tag``, ``_flow_ref``."""

    _label = ""
    _store_scheme = ""
    _store_refused = ""
    _handle_type: type = object
    images: Any
    monitor: Any
    handler: Any
    max_in_flight: int
    _lock: Any
    _in_flight: int
    _artifacts_ok: Any
    _flow_name: Any
    _flow_tag: str | None
    _flow_ref: str | None

    def _artifacts_attached(self) -> None:
        self._artifacts_ok = None

    def _check_artifacts(self) -> Any:
        arts = self.artifacts
        if self._artifacts_ok is arts:
            return arts
        if not str(getattr(arts, "url", "")).startswith(self._store_scheme):
            raise ConfigError(self._store_refused.format(url=getattr(arts, "url", arts)))
        arts.check()
        self.handler.artifacts = arts
        self._artifacts_ok = arts
        return arts

    def image_key(self, task: Any) -> str | None:
        got = self.images.task_ref(task, self._flow_name)
        return got[0] if got else self._flow_tag

    def _image_for(self, task: Any) -> str:
        got = self.images.task_ref(task, self._flow_name)
        if got is not None:
            return str(got[1])
        if self._flow_ref is None:
            raise ExecutorError(f"the {self._label} executor has no image: run a flow (its image is built and "
                                f"pushed) or give ?image=REF")
        return self._flow_ref

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(h.state) for h in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        gone = self.monitor.cancel([h for h in handles if isinstance(h, self._handle_type)])
        with self._lock:
            self._in_flight -= len(gone)

    def capacity(self) -> int:
        return self.max_in_flight - self._in_flight
