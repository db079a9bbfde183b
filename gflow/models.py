"""Models and datasets as artifacts: made from a local folder once, materialized once per worker host.

- :func:`from_dir` hashes a folder's files, puts each into the artifact store (a no-op for blobs
  already there) and returns a :class:`~gflow.objects.Model` whose source is the digest of its
  file list. That object is small, canonical and travels with a task call like any argument.
- :func:`materialize` gives a task the files as a folder: fetched from the artifact store into a
  per-host cache (``$GFLOW_MODEL_CACHE``, default ``$GFLOW_HOME/models``), keyed by the model's
  digest, each file verified against its digest, under a file lock so that concurrent workers on a
  host fetch it once; later calls (and later processes) reuse the folder and fetch nothing.
- :func:`resolve_model` turns what a user types (a folder, a hub id, a ``sha256:`` digest) into an
  artifact Model before any work is submitted. Hub ids are read from the local Hugging Face cache
  only: gflow never downloads weights at run time.

Which artifact store: the ``artifacts=`` argument; else the one set with :func:`use_artifacts`;
else, inside a flow body, the run's; else the profile's (``GFLOW_ARTIFACTS``, ``gflow.toml``, the
default folder under ``GFLOW_HOME``).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from gflow.artifacts import ArtifactStore, open_artifacts
from gflow.errors import ArtifactCorrupt, ArtifactNotFound, GflowError
from gflow.extras import optional
from gflow.objects import Dataset, Model
from gflow.objects.model import FileEntry, manifest_digest

__all__ = [
    "WEIGHT_SUFFIXES",
    "ModelError",
    "cache_root",
    "dataset_from",
    "from_dir",
    "materialize",
    "resolve_model",
    "use_artifacts",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".h5", ".msgpack", ".npz",
                   ".pkl", ".joblib")
"""File name endings that count as weights for ``from_dir(require_weights=True)``."""

_MANIFEST = ".gflow-manifest.json"
_current: contextvars.ContextVar[ArtifactStore | None] = contextvars.ContextVar("gflow_model_artifacts", default=None)
_hash_memo: dict[tuple[str, int, int, int], str] = {}
_materialized: dict[tuple[str, str], Path] = {}
_memo_lock = threading.Lock()
F = TypeVar("F", Model, Dataset)


class ModelError(GflowError, ValueError):
    """A model or dataset cannot be made, found or materialized; the message says which and the fix."""


@contextlib.contextmanager
def use_artifacts(store: ArtifactStore | str) -> Iterator[ArtifactStore]:
    """Within the block, models are put to and fetched from ``store`` unless a call names another."""
    opened = open_artifacts(store)
    token = _current.set(opened)
    try:
        yield opened
    finally:
        _current.reset(token)


def _artifacts(artifacts: ArtifactStore | str | None) -> ArtifactStore:
    if artifacts is not None:
        return open_artifacts(artifacts)
    current = _current.get()
    if current is not None:
        return current
    from gflow._context import current_flow, run_artifacts

    in_call = run_artifacts.get()
    if isinstance(in_call, ArtifactStore):
        return in_call

    run = current_flow.get()
    engine = getattr(run, "engine", None)
    if engine is not None and isinstance(getattr(engine, "artifacts", None), ArtifactStore):
        return engine.artifacts
    from gflow.config import load_profile

    return open_artifacts(load_profile().artifacts)


def cache_root() -> Path:
    """This host's model cache: ``$GFLOW_MODEL_CACHE``, default ``$GFLOW_HOME/models``."""
    env = os.environ.get("GFLOW_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    from gflow.config import gflow_home

    return gflow_home() / "models"


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _memo_lock:
        known = _hash_memo.get(key)
    if known is not None:
        return known
    with path.open("rb") as f:
        digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    with _memo_lock:
        _hash_memo[key] = digest
    return digest


def _walk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".gflow-")
                  and ".cache" not in p.relative_to(root).parts)


def _collect(root: Path, store: ArtifactStore, upload: bool) -> tuple[FileEntry, ...]:
    entries = []
    for path in _walk(root):
        digest = _file_digest(path)
        if upload and not store.exists(digest):
            store.put(path.read_bytes(), digest)
        entries.append(FileEntry(path=path.relative_to(root).as_posix(), digest=digest, size=path.stat().st_size))
    return tuple(entries)


def _put_manifest(store: ArtifactStore, files: tuple[FileEntry, ...]) -> str:
    rows = sorted([f.path, f.digest, f.size] for f in files)
    data = json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    digest = store.put(data)
    if digest != manifest_digest(files):  # the manifest blob's digest is the artifact's source
        raise ModelError("internal error: manifest digest mismatch")
    return digest


def _make(cls: type[F], path: str | os.PathLike[str], name: str | None, artifacts: ArtifactStore | str | None,
          **fields: Any) -> F:
    root = Path(path).expanduser().resolve()
    store = _artifacts(artifacts)
    files = _collect(root, store, upload=True)
    if not files:
        raise ModelError(f"{root} holds no files")
    source = _put_manifest(store, files)
    return cls(name=name or root.name, source=source, files=files, **fields)


def from_dir(path: str | os.PathLike[str], *, name: str | None = None, artifacts: ArtifactStore | str | None = None,
             require_weights: bool = True, metadata: dict[str, Any] | None = None) -> Model:
    """Turns a local folder into an artifact :class:`Model` (its files put into the artifact store).

    Args:
        path: The folder, e.g. one written by ``model.save_pretrained(path)``.
        name: Defaults to the folder's name.
        artifacts: The artifact store (see the module docstring for the default).
        require_weights: Refuse a folder without a weights file (``WEIGHT_SUFFIXES``).
        metadata: JSON-safe annotations for the Model.

    Raises:
        ModelError: If the folder is missing, empty, or has no weights when they are required.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelError(f"model folder {root} does not exist (or is not a folder)")
    if require_weights and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in _walk(root)):
        raise ModelError(f"model folder {root} has no weights (no file ending in {', '.join(WEIGHT_SUFFIXES[:4])}, "
                         f"...); save the model there first, e.g. model.save_pretrained({str(root)!r})")
    return _make(Model, root, name, artifacts, metadata=metadata or {})


def dataset_from(path: str | os.PathLike[str], *, name: str | None = None,
                 artifacts: ArtifactStore | str | None = None, format: str | None = None) -> Dataset:
    """Turns a local file or folder into an artifact :class:`Dataset`.

    A single file becomes a one-file dataset (its name as the path); ``format`` defaults to its suffix.

    Raises:
        ModelError: If the path does not exist or holds no files.
    """
    p = Path(path).expanduser().resolve()
    if p.is_file():
        store = _artifacts(artifacts)
        digest = _file_digest(p)
        if not store.exists(digest):
            store.put(p.read_bytes(), digest)
        files = (FileEntry(path=p.name, digest=digest, size=p.stat().st_size),)
        return Dataset(name=name or p.stem, source=_put_manifest(store, files), files=files,
                       format=format or (p.suffix.lstrip(".") or None))
    if not p.is_dir():
        raise ModelError(f"dataset path {p} does not exist")
    return _make(Dataset, p, name, artifacts, format=format)


def _hub_snapshot(repo_id: str) -> Path:
    hub = optional("huggingface_hub")
    if hub is None:
        raise ModelError(f"model {repo_id!r} looks like a hub id, but huggingface_hub is not installed "
                         f"(pip install 'gflow[ml]'), or pass a local folder")
    try:
        return Path(hub.snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's not-cached / offline errors vary by version
        raise ModelError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({type(exc).__name__}); gflow never "
            f"downloads weights at run time: fetch it beforehand (`hf download {repo_id}`) or pass a folder "
            f"written with save_pretrained") from None


def resolve_model(model: str | os.PathLike[str] | Model, *, artifacts: ArtifactStore | str | None = None) -> Model:
    """What a user names as a model (a folder, a hub id in the local cache, a digest) as an artifact Model.

    Call it in the flow body (on the driver) so that a missing model fails before work is submitted.

    Raises:
        ModelError: Naming what was not found and the fix.
    """
    if isinstance(model, Model):
        if model.kind == "artifact":
            return model
        model = model.source
    text = os.fspath(model)
    if text.startswith("sha256:"):
        store = _artifacts(artifacts)
        try:
            rows = json.loads(store.get(text))
        except ArtifactNotFound:
            raise ModelError(f"model {text} is not in the artifact store {store.url}") from None
        except ValueError:
            raise ModelError(f"{text} in {store.url} is not a model manifest") from None
        files = tuple(FileEntry(path=p, digest=d, size=s) for p, d, s in rows)
        return Model(name=text[7:19], source=text, files=files)
    path = Path(text).expanduser()
    if path.is_dir():
        return from_dir(path, artifacts=artifacts)
    if text.startswith(("/", ".", "~")) or os.sep in text.strip("/").replace("/", "", 1):
        raise ModelError(f"model folder {text} does not exist")
    snapshot = _hub_snapshot(text)
    return from_dir(snapshot, name=text.split("/")[-1], artifacts=artifacts, metadata={"hub_id": text})


@contextlib.contextmanager
def _host_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def materialize(obj: Model | Dataset, *, artifacts: ArtifactStore | str | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding a model's (or dataset's) files on this host, fetching them at most once per host.

    Artifacts are fetched into ``<cache>/<hex digest>`` under a file lock, each file checked against
    its digest, and the folder appears (atomically renamed) only when complete; later calls in any
    process return it without touching the artifact store. A ``dir`` source is returned as it is (its
    listed files checked for presence and size); a hub id is looked up in the local Hugging Face cache.

    Raises:
        ModelError: A missing folder, a hub id that is not cached, or a blob whose bytes do not match.
        ArtifactNotFound: A file's blob is missing from the artifact store.
    """
    if obj.kind == "hub":
        return _hub_snapshot(obj.source)
    if obj.kind == "dir":
        root = Path(obj.source)
        if not root.is_dir():
            raise ModelError(f"{type(obj).__name__} {obj.name!r}: folder {root} does not exist on this host; make "
                             f"it an artifact with gflow.models.from_dir so that remote workers can fetch it")
        for entry in obj.files:
            f = root / entry.path
            if not f.is_file() or f.stat().st_size != entry.size:
                raise ModelError(f"{type(obj).__name__} {obj.name!r}: {f} is missing or changed size")
        return root
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    hexd = obj.source.removeprefix("sha256:")
    dest = root / hexd
    memo_key = (obj.source, str(root))
    with _memo_lock:
        known = _materialized.get(memo_key)
    if known is not None and known.is_dir():
        return known
    if not dest.is_dir():
        with _host_lock(root / f".{hexd}.lock"):
            if not dest.is_dir():  # another process may have finished while this one waited
                _fetch(obj, _artifacts(artifacts), root, dest)
    with _memo_lock:
        _materialized[memo_key] = dest
    return dest


def _fetch(obj: Model | Dataset, store: ArtifactStore, root: Path, dest: Path) -> None:
    tmp = root / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for entry in obj.files:
            try:
                data = store.get(entry.digest)  # verified against its digest by the store
            except ArtifactCorrupt as e:
                raise ModelError(f"{type(obj).__name__} {obj.name!r}: the blob for {entry.path} in {store.url} "
                                 f"does not match its digest; the artifact store is corrupt ({e})") from None
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / _MANIFEST).write_text(json.dumps({"name": obj.name, "source": obj.source, "files": len(obj.files)}))
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
