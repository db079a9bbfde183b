"""The default artifact store: a local folder, ``<root>/sha256/ab/cdef...`` (blobs and slots alike)."""

from __future__ import annotations

import os
import tempfile

from gflow.artifacts.base import ArtifactStore, check_key
from gflow.config import make_private_dirs
from gflow.errors import ArtifactNotFound, ConfigError


class LocalArtifactStore(ArtifactStore):
    """``file:///path/to/artifacts`` or a plain path."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.url = "file://" + self.root
        make_private_dirs(self.root)  # results are research data: a new folder (and GFLOW_HOME) is 0700

    @classmethod
    def from_url(cls, url: str) -> LocalArtifactStore:
        path = url[len("file://"):] if url.startswith("file://") else url
        if not path:
            raise ConfigError(f"artifact URL {url!r} names no folder")
        return cls(path)

    def path(self, key: str) -> str:
        """The file of a key (raises ArtifactNotFound for anything but ``sha256:<64 hex>``: no path tricks)."""
        algo, _, hexd = check_key(key).partition(":")
        return os.path.join(self.root, algo, hexd[:2], hexd[2:])

    def write(self, key: str, data: bytes, *, replace: bool = False) -> None:
        dest = self.path(key)
        if not replace and os.path.exists(dest):
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)  # atomic: readers never see a partial blob
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read(self, key: str) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {key} is missing from {self.url}") from None

    def exists(self, key: str) -> bool:
        return os.path.exists(self.path(key))
