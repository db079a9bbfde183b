"""Locks: the exact wheels an image installs, so that unpinned dependencies never make a tag lie.

An image's Python dependencies (gflow's own runtime requirements + ``Image.packages`` + the lines
of ``Image.requirements``) are resolved on the host with ``pip install --dry-run --report`` for the
image's target (CPython version and Linux platform), binary wheels only. The result is a lock:
one ``name==version --hash=sha256:...`` line per distribution of the whole closure, in canonical
order. The lock's text is part of the hashed build context, and the image installs it with
``pip install --no-index --require-hashes``, so the tag pins the very bytes of every wheel.

Where the lock lives:

- ``Image(lock="gflow.lock")`` (a path relative to the project root): used as is when the file
  exists (every line must be an exact ``==`` pin); written by the first resolution when it does
  not. Commit it and every machine computes the same tag.
- otherwise a per-request cache under ``$GFLOW_CACHE/locks`` (default ``~/.cache/gflow``): the
  same request resolves once per machine and keeps its tag until ``refresh=True``.

The host-installed versions of gflow's own dependencies are preferred (as constraints), so the
image runs the same pydantic as the driver; if that conflicts with the user's packages the
resolution is retried without them. Wheels are fetched into ``$GFLOW_CACHE/wheels`` with ``pip
download`` at build time only, never to compute a tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gflow.images.errors import LockError, UnpinnedDependency

_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
_WHEEL_SAVED = re.compile(r"(?:Saved|File was already downloaded)\s+(.+?\.whl)\s*$")


def normalize(name: str) -> str:
    """PEP 503 name normalization (``Typing_Extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cache_root() -> Path:
    env = os.environ.get("GFLOW_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gflow"


@dataclass(frozen=True, slots=True)
class Target:
    """The interpreter and platform wheels are chosen for."""

    python_version: str = "3.11"
    arch: str = "x86_64"
    glibc: str = "2.36"

    def pip_args(self) -> list[str]:
        major, minor = (int(x) for x in self.glibc.split(".")[:2])
        plats = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        plats += [f"manylinux2014_{self.arch}", f"manylinux2010_{self.arch}", f"manylinux1_{self.arch}",
                  f"linux_{self.arch}"]
        abi = "cp" + self.python_version.replace(".", "")
        args = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp",
                "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for p in plats:
            args += ["--platform", p]
        return args


@dataclass(frozen=True, slots=True)
class LockEntry:
    name: str
    version: str
    hashes: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.name}=={self.version}" + "".join(f" --hash={h}" for h in self.hashes)


@dataclass(frozen=True, slots=True)
class Lock:
    """An exact set of distributions (the closure), in canonical order."""

    entries: tuple[LockEntry, ...]
    origin: str = ""

    @property
    def text(self) -> str:
        """Canonical text (what is hashed and installed): sorted pins, one per line, no comments."""
        return "".join(e.line() + "\n" for e in self.entries)

    def get(self, name: str) -> LockEntry | None:
        n = normalize(name)
        return next((e for e in self.entries if e.name == n), None)

    @property
    def hashed(self) -> bool:
        return bool(self.entries) and all(e.hashes for e in self.entries)


def parse_requirement(spec: str) -> tuple[str, str]:
    """``(normalized name, rest)`` of a requirement specifier, or ValueError."""
    m = _NAME_RE.match(spec)
    if not m or spec.strip().startswith(("-", "/", ".")) or "://" in spec:
        raise ValueError(f"{spec!r} is not a requirement like 'name', 'name==1.2' or 'name>=1,<2'")
    return normalize(m.group(1)), (m.group(3) or "").strip()


def parse_lock(text: str, where: str = "lock") -> Lock:
    """Parse a lock (``name==version [--hash=sha256:...]`` lines, ``\\`` continuations, comments).

    Raises:
        UnpinnedDependency: for a line that is not an exact ``==`` pin.
    """
    joined = re.sub(r"\\\s*\n", " ", text)
    entries: dict[str, LockEntry] = {}
    for n, raw in enumerate(joined.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        req, opts = parts[0], parts[1:]
        hashes = tuple(sorted(o.split("=", 1)[1] for o in opts if o.startswith("--hash=")))
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?===?([^\s;,]+)(;.*)?$", req)
        if not m or any(c in m.group(2) for c in "*<>!~"):
            raise UnpinnedDependency(f"{where}, line {n}: {req!r} is not an exact pin; a lock needs name==version")
        entries[normalize(m.group(1))] = LockEntry(normalize(m.group(1)), m.group(2), hashes)
    return Lock(tuple(entries[k] for k in sorted(entries)), where)


def _installed_constraints(requirements: list[str]) -> list[str]:
    """Host versions of the closure of ``requirements`` that are installed here (pins)."""
    from importlib.metadata import PackageNotFoundError, distribution

    seen: dict[str, str] = {}
    todo = [parse_requirement(r)[0] for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[name] = dist.version
        for r in dist.requires or []:
            if "extra ==" in r or "extra==" in r:
                continue
            try:
                todo.append(parse_requirement(r.split(";")[0])[0])
            except ValueError:
                continue
    return [f"{k}=={v}" for k, v in sorted(seen.items())]


def _pip(args: list[str], what: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise LockError(f"{what}: pip did not finish within {timeout:.0f}s") from e
    return res


def resolve(requirements: list[str], target: Target, requirements_file: str | None = None,
            constraints: list[str] | tuple[str, ...] = ()) -> Lock:
    """Resolve requirements to a hashed lock with pip's resolver (needs index access, not an engine).

    Raises:
        LockError: with pip's own explanation when the requirements cannot be satisfied.
    """
    with tempfile.TemporaryDirectory(prefix="gflow-lock-") as tmp:
        report = os.path.join(tmp, "report.json")
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", report,
                "--target", os.path.join(tmp, "t"), *target.pip_args()]
        if constraints:
            cpath = os.path.join(tmp, "constraints.txt")
            Path(cpath).write_text("\n".join(constraints) + "\n")
            args += ["-c", cpath]
        if requirements_file:
            args += ["-r", requirements_file]
        res = _pip([*args, *requirements], "resolving dependencies")
        if res.returncode != 0:
            errors = [ln for ln in (res.stderr or res.stdout).splitlines() if not ln.startswith("WARNING: Location")]
            what = ", ".join(requirements) or "the requirements"
            raise LockError(f"could not resolve {what} for Python {target.python_version} on {target.arch}:\n"
                            + "\n".join(errors[-25:]))
        with open(report) as f:
            data = json.load(f)
    entries = {}
    for item in data.get("install", []):
        name = normalize(item["metadata"]["name"])
        info = item.get("download_info", {})
        hashes = info.get("archive_info", {}).get("hashes", {})
        h = (f"sha256:{hashes['sha256']}",) if "sha256" in hashes else ()
        entries[name] = LockEntry(name, item["metadata"]["version"], h)
    return Lock(tuple(entries[k] for k in sorted(entries)), "resolved")


def _satisfies(entry: LockEntry, spec: str) -> bool:
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # packaging is not a dependency: only exact pins are checked then
        m = re.fullmatch(r"==\s*([^\s,;]+)", spec)
        return m is None or m.group(1) == entry.version
    try:
        return SpecifierSet(spec.split(";")[0]).contains(entry.version, prereleases=True)
    except Exception:  # noqa: BLE001 - a specifier pip accepts but packaging does not: pip decides
        return True


def check_covers(lock: Lock, requirements: list[str], where: str) -> None:
    """Every requirement must be in the lock, at a version that satisfies it."""
    problems = []
    for r in requirements:
        name, spec = parse_requirement(r)
        e = lock.get(name)
        if e is None:
            problems.append(f"{r!r} is missing")
        elif not _satisfies(e, spec):
            problems.append(f"{r!r} is locked at {e.version}")
    if problems:
        raise LockError(f"{where} does not satisfy the image's requirements: {'; '.join(problems)}. Delete it "
                        f"to resolve again, or update it")


def lock_for(requirements: list[str], target: Target, *, lock_file: str | None = None,
             requirements_file: str | None = None, prefer: list[str] | tuple[str, ...] = (),
             refresh: bool = False) -> Lock:
    """The lock for an image's requirements (see the module docstring for where it comes from).

    Args:
        requirements: Requirement specifiers (gflow's own first, then the image's packages).
        lock_file: An explicit lock file: read if present, written after resolving if not.
        requirements_file: A requirements.txt whose lines join the resolution.
        prefer: Requirements whose host-installed closure is preferred (gflow's own).
        refresh: Resolve again even if a cached lock exists.
    """
    if lock_file and os.path.isfile(lock_file) and not refresh:
        with open(lock_file) as f:
            lock = parse_lock(f.read(), lock_file)
        check_covers(lock, requirements, lock_file)
        return lock
    req_text = Path(requirements_file).read_text() if requirements_file else ""
    constraints = _installed_constraints(list(prefer))
    key = hashlib.sha256(json.dumps({"requirements": sorted(requirements), "file": req_text,
                                     "target": [target.python_version, target.arch, target.glibc],
                                     "prefer": constraints}, sort_keys=True).encode()).hexdigest()[:32]
    cached = cache_root() / "locks" / f"{key}.lock"
    if not lock_file and cached.is_file() and not refresh:
        return parse_lock(cached.read_text(), str(cached))
    try:
        lock = resolve(requirements, target, requirements_file, constraints)
    except LockError:
        if not constraints:
            raise
        lock = resolve(requirements, target, requirements_file)
    header = (f"# gflow lock: Python {target.python_version}, {target.arch}, glibc {target.glibc}\n"
              f"# resolved from: {' '.join(requirements)}\n")
    dest = Path(lock_file) if lock_file else cached
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(header + lock.text)
    os.replace(tmp, dest)
    return Lock(lock.entries, str(dest))


def fetch_wheels(lock: Lock, target: Target) -> list[Path]:
    """Download (or find in the cache) the wheel of every lock entry; returns their paths.

    Raises:
        LockError: naming the entries pip could not fetch, or a wheel whose hash is not the lock's.
    """
    if not lock.entries:
        return []
    dest = cache_root() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest / "index.json"
    try:
        index: dict[str, str] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if lock.hashed:  # every wheel already fetched and verified once: no pip, no index access
        known = [dest / index[e.hashes[0]] for e in lock.entries if e.hashes[0] in index]
        if len(known) == len(lock.entries) and all(p.is_file() for p in known):
            return known
    with tempfile.NamedTemporaryFile("w", suffix=".lock", delete=False) as f:
        f.write(lock.text)
        path = f.name
    try:
        res = _pip(["download", "--no-deps", "--dest", str(dest), *target.pip_args(), "-r", path],
                   "fetching wheels")
    finally:
        os.unlink(path)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).splitlines()[-20:])
        raise LockError("could not fetch the locked wheels:\n" + tail)
    found: dict[str, Path] = {}
    for line in res.stdout.splitlines():
        m = _WHEEL_SAVED.search(line.strip())
        if m:
            p = Path(m.group(1))
            p = p if p.is_absolute() else dest / p.name
            found[normalize(p.name.split("-")[0])] = p
    missing = [e.name for e in lock.entries if e.name not in found]
    if missing:
        raise LockError(f"pip did not report wheels for {missing} (output: {res.stdout[-1500:]})")
    out = []
    for e in lock.entries:
        p = found[e.name]
        if e.hashes:
            h = "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
            if h not in e.hashes:
                raise LockError(f"wheel {p.name} has {h}, not the locked {e.hashes[0]}")
            index[h] = p.name
        out.append(p)
    tmp = index_path.with_name(f"index.json.{os.getpid()}")
    tmp.write_text(json.dumps(index, sort_keys=True, indent=0))
    os.replace(tmp, index_path)
    return out


def describe(lock: Lock) -> dict[str, Any]:
    return {"origin": lock.origin, "entries": len(lock.entries), "hashed": lock.hashed}
