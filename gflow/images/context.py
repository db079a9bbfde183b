"""The deterministic build context of an image, and its tag.

A context is a sorted list of files, each ``(path, mode, sha256)``: the rendered ``Dockerfile``,
``image.json`` (the layout the worker and replay read back), ``requirements.lock`` (the exact,
hashed closure of the Python dependencies), the reproducible gflow wheel and the code files.
Modes are reduced to 644/755 and times are not part of it, so a checkout, a copy or another machine
gives the same hash. The tag is ``gflow-<name>:<first 16 hex of that hash>``. The locked third-party
wheels are covered through their hashes in the lock (the image verifies them with
``--require-hashes``), so computing a tag never downloads or reads them.

Layers are ordered by how often they change (base, apt, venv + locked deps, gflow, env, code), so
a code-only change rebuilds only the last layer. In dev mode the code is left out (a deps-only
image) and shipped instead as a content-addressed bundle (:meth:`BuildContext.bundle`).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gflow.images import Image
from gflow.images.errors import ImageError
from gflow.images.ignore import walk
from gflow.images.lock import Lock, Target, fetch_wheels, lock_for

ROOT = "/opt/gflow"
CODE = f"{ROOT}/code"
VENV = f"{ROOT}/venv"
FORMAT = "gflow.image/v1"
BUNDLE_FORMAT = "gflow.bundle/v1"
_KEEP_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ContextFile:
    """One file of a context: its bytes, or the host file they are read from at build time."""

    path: str
    mode: int
    digest: str
    data: bytes | None = None
    source: str | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.source, "rb") as f:  # type: ignore[arg-type]
            data = f.read()
        if hashlib.sha256(data).hexdigest() != self.digest:
            raise ImageError(f"{self.source} changed while the image was being built; build again")
        return data


def _file(path: str, data: bytes, mode: int = 0o644) -> ContextFile:
    return ContextFile(path, mode, hashlib.sha256(data).hexdigest(), data=data)


def _host_file(path: str, source: str) -> ContextFile:
    with open(source, "rb") as f:
        data = f.read()
    mode = 0o755 if os.stat(source).st_mode & stat.S_IXUSR else 0o644
    # small files are kept: what is built is what was hashed; big ones are read again (and checked)
    keep = data if len(data) <= _KEEP_BYTES else None
    return ContextFile(path, mode, hashlib.sha256(data).hexdigest(), data=keep, source=source)


def digest_files(files: Iterable[ContextFile]) -> str:
    h = hashlib.sha256(b"gflow.context/v1\n")
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.mode:o}\0{f.digest}\n".encode())
    return h.hexdigest()


def repo_name(*parts: str) -> str:
    """A valid repository name: ``gflow-<parts>`` lowercased, other characters as '-'."""
    name = "-".join(["gflow", *parts]).lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9._-]", "-", name)).strip("-._")[:120]


@dataclass
class BuildContext:
    """A rendered context; :attr:`tag` is its content hash."""

    name: str
    image: Image
    files: list[ContextFile]
    lock: Lock
    target: Target
    code_roots: list[tuple[str, str]]
    pythonpath: list[str]
    dev: bool = False
    code: list[ContextFile] = field(default_factory=list)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.files.sort(key=lambda f: f.path)
        self.digest = digest_files(self.files)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.digest[:16]}"

    @property
    def dockerfile(self) -> str:
        return next(f for f in self.files if f.path == "Dockerfile").read().decode()

    def write_tar(self, fileobj: IO[bytes], wheels: list[Path] | None = None) -> None:
        """The context as Docker wants it: an uncompressed tar, fixed owners and times.

        Args:
            wheels: The locked third-party wheels (:func:`gflow.images.lock.fetch_wheels`), added
                under ``wheels/deps/``; they are not part of the hash (the lock's hashes are).
        """
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for f in self.files:
                _add(tar, f.path, f.read(), f.mode)
            for p in wheels or []:
                _add(tar, f"wheels/deps/{p.name}", p.read_bytes(), 0o644)

    def materialize(self, folder: str | os.PathLike, wheels: list[Path] | None = None) -> None:
        """Write the context to a folder (for ``gflow build --context-out`` and inspection)."""
        for f in self.files:
            dest = Path(folder) / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read())
            dest.chmod(f.mode)
        for p in wheels or []:
            dest = Path(folder) / "wheels" / "deps" / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())

    def fetch_wheels(self) -> list[Path]:
        return fetch_wheels(self.lock, self.target)

    def bundle(self) -> bytes:
        """The code as a content-addressed bundle (dev mode): a deterministic tar of the code
        files plus ``gflow-bundle.json`` (the PYTHONPATH entries, relative to the bundle)."""
        manifest = {"format": BUNDLE_FORMAT, "pythonpath": [p.removeprefix(f"{ROOT}/") for p in self.pythonpath]}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "gflow-bundle.json", json.dumps(manifest, sort_keys=True).encode(), 0o644)
            for f in self.code:
                _add(tar, f.path, f.read(), f.mode)
        return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    tar.addfile(ti, io.BytesIO(data))


# -- where a flow's code is ------------------------------------------------------------------------------
def source_file(obj: Any) -> str:
    """The file a flow or task was defined in."""
    path = getattr(obj, "source_file", None)
    if not path:
        fn = getattr(obj, "fn", obj)
        try:
            path = inspect.getsourcefile(fn)
        except TypeError:
            path = None
    if not path or not os.path.isfile(path):
        raise ImageError(f"cannot find the source file of {obj!r}; images need flows defined in files")
    return os.path.abspath(path)


def package_top(folder: str) -> str:
    """The folder above the outermost package containing ``folder`` (``folder`` if it is none)."""
    folder = os.path.abspath(folder)
    while os.path.isfile(os.path.join(folder, "__init__.py")) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _code_roots(image: Image, base_dir: str) -> list[tuple[str, str]]:
    roots = [os.path.abspath(os.path.join(base_dir, c)) for c in image.code] or [package_top(base_dir)]
    flow_top = package_top(base_dir)
    if not any(flow_top == r or flow_top.startswith(r + os.sep) for r in roots):
        roots.append(flow_top)  # the flow's own module must be importable in the image
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for r in dict.fromkeys(roots):
        if not os.path.isdir(r):
            raise ImageError(f"Image.code: {r} is not a folder")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(r.rstrip(os.sep)) or "root")
        n, i = name, 2
        while n in used:
            n, i = f"{name}-{i}", i + 1
        used.add(n)
        out.append((n, r))
    return out


def _gflow_requirements() -> list[str]:
    from gflow.images.wheel import project_metadata

    return list(project_metadata()["requires"])


def _abs(base_dir: str, p: str | None) -> str | None:
    return None if p is None else os.path.abspath(os.path.join(base_dir, p))


def render(image: Image, *, name: str, base_dir: str, dev: bool = False, refresh_lock: bool = False,
           lock: Lock | None = None) -> BuildContext:
    """Render ``image`` into a build context.

    Args:
        name: Repository name (``gflow-<flow>``).
        base_dir: Folder that relative paths of the image (code, lock, requirements) start from.
        dev: Leave the code out (a deps-only image; the code travels as a bundle).
        refresh_lock: Resolve unpinned dependencies again.
        lock: Use this lock instead of resolving (tests, benchmarks).

    Raises:
        LockError, UnpinnedDependency, ImageError: with the offending file or requirement named.
    """
    target = Target(image.python_version, image.arch, image.glibc)
    gflow_reqs = _gflow_requirements() if image.include_gflow else []
    if lock is None:
        requirements = [*gflow_reqs, *image.packages]
        req_file = _abs(base_dir, image.requirements)
        if req_file and not os.path.isfile(req_file):
            raise ImageError(f"Image.requirements: {req_file} does not exist")
        if requirements or req_file:
            lock = lock_for(requirements, target, lock_file=_abs(base_dir, image.lock), requirements_file=req_file,
                            prefer=gflow_reqs, refresh=refresh_lock)
        else:
            lock = Lock((), "empty")
    files: list[ContextFile] = [_file("requirements.lock", lock.text.encode())]
    if image.include_gflow:
        from gflow.images.wheel import gflow_wheel

        wname, wdata = gflow_wheel()
        files.append(_file(f"wheels/gflow/{wname}", wdata))
    roots = _code_roots(image, base_dir)
    pythonpath = [f"{CODE}/{n}" for n, _ in roots]
    for n, r in roots:  # a flow file inside a package is imported by its file name: its folder too
        rel = os.path.relpath(os.path.abspath(base_dir), r)
        if not rel.startswith("..") and rel != ".":
            pythonpath.append(f"{CODE}/{n}/{rel.replace(os.sep, '/')}")
    lock_path = _abs(base_dir, image.lock)  # represented by requirements.lock, canonically
    code = [_host_file(f"code/{n}/{rel}", path) for n, r in roots for rel, path in walk(r)
            if os.path.abspath(path) != lock_path]
    if not dev:
        files.extend(code)
    spec = image.model_dump(mode="json")
    spec["code"] = [n for n, _ in roots]  # names, never host paths: the tag must not depend on them
    spec.pop("lock", None)
    spec.pop("requirements", None)
    meta = {"format": FORMAT, "dev": dev, "pythonpath": pythonpath, "image": spec}
    files.append(_file("image.json", json.dumps(meta, sort_keys=True, indent=1).encode()))
    files.append(_file("Dockerfile", dockerfile(image, lock, pythonpath, dev, bool(gflow_reqs)).encode()))
    return BuildContext(name, image, files, lock, target, roots, pythonpath, dev, code)


def dockerfile(image: Image, lock: Lock, pythonpath: list[str], dev: bool, with_gflow: bool) -> str:
    pip = f"{VENV}/bin/python -m pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check"
    lines = ["# rendered by gflow (gflow.images.context); the image tag is a hash of this context",
             f"FROM {image.base}", "USER root"]
    if image.apt_packages:
        lines.append("RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                     f"--no-install-recommends {' '.join(image.apt_packages)} && rm -rf /var/lib/apt/lists/*")
    lines.append(f"RUN {image.python} -m venv {VENV}")
    if lock.entries:
        req = "--require-hashes " if lock.hashed else ""
        lines += [f"COPY requirements.lock {ROOT}/requirements.lock",
                  f"COPY wheels/deps/ {ROOT}/wheels/",
                  f"RUN {pip} {req}--find-links {ROOT}/wheels -r {ROOT}/requirements.lock && rm -rf {ROOT}/wheels"]
    if with_gflow:
        lines += [f"COPY wheels/gflow/ {ROOT}/wheels-gflow/",
                  f"RUN {pip} {ROOT}/wheels-gflow/*.whl && rm -rf {ROOT}/wheels-gflow"]
    lines.append(f"ENV PATH={VENV}/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1")
    for k, v in image.env.items():
        lines.append(f"ENV {k}={json.dumps(v)}")
    lines.append(f"COPY image.json {ROOT}/image.json")
    if not dev:
        lines += [f"COPY code/ {CODE}/", f"ENV PYTHONPATH={':'.join(pythonpath)}", f"WORKDIR {pythonpath[0]}"]
    else:
        lines.append(f"WORKDIR {ROOT}")
    lines += ['ENTRYPOINT ["gflow"]', 'CMD ["worker", "--help"]']
    return "\n".join(lines) + "\n"


# -- flows and tasks -------------------------------------------------------------------------------------
def flow_image(flow: Any) -> Image:
    """The ``Image`` a flow's image is built from (``Image()`` when it names none).

    Raises:
        ImageError: the flow names a plain reference (nothing to build: :func:`flow_image_ref`), or not an image.
    """
    img = getattr(flow, "image", None)
    if img is None:
        return Image()
    if isinstance(img, str):
        raise ImageError(f"flow '{flow.name}': image {img!r} is a plain reference, run as given; there is nothing "
                         f"to build (use gflow.Image(...) to have gflow build the flow's image)")
    if not isinstance(img, Image):
        raise ImageError(f"flow '{flow.name}': image must be a gflow.Image or an image reference, got "
                         f"{type(img).__name__}")
    return img


def flow_image_ref(flow: Any) -> str | None:
    """A flow's plain image reference (``@gflow.flow(image="registry/lab/screen:1.0")``), which image-based
    executors run as given, as they do a task's; None when the flow has an ``Image`` or none.

    Raises:
        ImageError: an empty reference or one with spaces in it.
    """
    img = getattr(flow, "image", None)
    if not isinstance(img, str):
        return None
    ref = img.strip()
    if not ref or any(c.isspace() for c in ref):
        raise ImageError(f"flow '{flow.name}': image {img!r} is not an image reference (like "
                         f"registry.example.org/lab/screen:1.0)")
    return ref


def flow_context(flow: Any, *, dev: bool = False, refresh_lock: bool = False) -> BuildContext:
    """The context of a flow's image (``gflow-<flow>``; ``gflow-<flow>-deps`` in dev mode)."""
    base_dir = os.path.dirname(source_file(flow))
    name = repo_name(flow.name, "deps") if dev else repo_name(flow.name)
    return render(flow_image(flow), name=name, base_dir=base_dir, dev=dev, refresh_lock=refresh_lock)


def task_context(task: Any, flow_name: str, *, dev: bool = False) -> BuildContext | None:
    """The context of a task's own image (``gflow-<flow>-<task>``), or None if it has none."""
    img = task.options.image
    if img is None or isinstance(img, str):
        return None
    if not isinstance(img, Image):
        raise ImageError(f"task '{task.name}': image must be a gflow.Image or a tag, got {type(img).__name__}")
    base_dir = os.path.dirname(source_file(task))
    return render(img, name=repo_name(flow_name, task.name, *(["deps"] if dev else [])), base_dir=base_dir, dev=dev)
