"""Models and datasets as objects: a name, where the files come from, and the files by digest.

A ``Model`` or ``Dataset`` is a manifest, not the bytes. Its ``source`` says where the files are:

- ``"sha256:<hex>"``: an **artifact** -- every file is a blob in gflow's artifact store, listed in
  ``files`` by digest; the source is the digest of that list, so it pins the exact bytes. This is
  the form that travels: any worker that reaches the artifact store can materialize it
  (``gflow.models.materialize``), once per host.
- an absolute path: a **local directory** on the machine that made the object.
- ``"org/name"``: a **hub id**, resolved from the local Hugging Face cache only, never downloaded.

``gflow.models.from_dir(path)`` turns a directory into an artifact ``Model``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from ._base import CONTENT_ID_PATTERN, GflowObject, Metadata

SourceKind = Literal["artifact", "dir", "hub"]
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$", re.ASCII)
Digest = Annotated[str, StringConstraints(pattern=CONTENT_ID_PATTERN)]


class FileEntry(GflowObject):
    """One file of a model or dataset.

    Attributes:
        path: Relative POSIX path inside the model's folder (no ``..``, not absolute).
        digest: ``sha256:<hex>`` of the file's bytes (its blob in the artifact store).
        size: Bytes.
    """

    path: str = Field(min_length=1)
    digest: Digest
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        pure = PurePosixPath(value)
        if pure.is_absolute() or "\\" in value or any(part in ("..", "") for part in value.split("/")):
            raise ValueError(f"file path {value!r} must be relative, with '/' separators and no '..'")
        return value

    def summary(self) -> str:
        return f"FileEntry {self.path} ({_size(self.size)})"


def manifest_digest(files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    """``sha256:`` of the canonical list of (path, digest, size), sorted by path: an artifact's source."""
    rows = sorted([f.path, f.digest, f.size] for f in files)
    text = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_kind(source: str) -> SourceKind:
    """What a source string names: an artifact digest, an absolute local directory, or a hub id."""
    if source.startswith("sha256:"):
        return "artifact"
    if source.startswith("/"):
        return "dir"
    return "hub"


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


class _FileSet(GflowObject):
    """What Model and Dataset share: a name, a source, the files and their total size."""

    name: str = Field(min_length=1)
    source: str = Field(min_length=1)
    files: tuple[FileEntry, ...] = ()
    size: int = Field(default=0, ge=0)
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        kind = source_kind(value)
        if kind == "artifact" and re.fullmatch(CONTENT_ID_PATTERN, value) is None:
            raise ValueError(f"artifact source {value!r} must be 'sha256:' and 64 lowercase hex digits")
        if kind == "hub" and _HUB_ID_RE.match(value) is None:
            raise ValueError(f"source {value!r} is neither an artifact digest ('sha256:...'), an absolute "
                             f"directory, nor a hub id like 'facebook/esm2_t6_8M_UR50D'")
        return value

    def registry_key(self) -> str | None:
        """An artifact's digest: a call that read it is found by ``key:model:sha256:...`` whatever its name."""
        return self.source if self.source.startswith("sha256:") else None

    @field_validator("files")
    @classmethod
    def _distinct_paths(cls, files: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise ValueError(f"file {entry.path!r} is listed twice")
            seen.add(entry.path)
        return tuple(sorted(files, key=lambda f: f.path))

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        total = sum(f.size for f in self.files)
        if self.files and self.size != total:
            if self.size != 0:
                raise ValueError(f"size {self.size} is not the files' total {total}")
            object.__setattr__(self, "size", total)
        if self.kind == "artifact":
            if not self.files:
                raise ValueError("an artifact source needs its files (make it with gflow.models.from_dir)")
            expected = manifest_digest(self.files)
            if self.source != expected:
                raise ValueError(f"source {self.source} is not the digest of the files listed ({expected})")
        return self

    @property
    def kind(self) -> SourceKind:
        """``"artifact"``, ``"dir"`` or ``"hub"`` (see the module docstring)."""
        return source_kind(self.source)

    def file(self, path: str) -> FileEntry | None:
        """The entry for ``path``, or None."""
        return next((f for f in self.files if f.path == path), None)

    def summary(self) -> str:
        """``Model esm2_t6_8M: dir /models/esm2 (3 files, 31.4 MB: config.json, model.safetensors, ...)``."""
        source = self.source[:19] if self.kind == "artifact" else self.source
        where = {"artifact": "artifact", "dir": "dir", "hub": "hub id"}[self.kind]
        names = ", ".join(f.path for f in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        files = f" ({len(self.files)} files, {_size(self.size)}: {names})" if self.files else ""
        return f"{type(self).__name__} {self.name}: {where} {source}{files}"


class Model(_FileSet):
    """A model's files: a hub id, a local directory, or an artifact (files by digest).

    Attributes:
        name: What to call it, e.g. ``"esm2_t6_8M_UR50D"``.
        source: ``"sha256:..."`` (artifact), an absolute directory, or a hub id.
        files: The files, by relative path, digest and size (required for artifacts).
        size: Total bytes of ``files``.
        metadata: JSON-safe annotations (framework, revision, ...).
    """


class Dataset(_FileSet):
    """A data set's files, in the same three forms as :class:`Model`.

    Attributes:
        name: What to call it.
        source: ``"sha256:..."`` (artifact), an absolute path, or a hub id.
        files: The files, by relative path, digest and size.
        size: Total bytes.
        format: Optional format name, e.g. ``"csv"``, ``"fasta"``, ``"parquet"``.
        metadata: JSON-safe annotations.
    """

    format: str | None = None
