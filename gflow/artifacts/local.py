"""The default artifact store: a local folder, ``<root>/sha256/ab/cdef...``."""

from __future__ import annotations

import os
import tempfile

from gflow.artifacts.base import ArtifactStore, digest_of
from gflow.errors import ArtifactNotFound, ConfigError


class LocalArtifactStore(ArtifactStore):
    """``file:///path/to/artifacts`` or a plain path."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.url = "file://" + self.root
        os.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> LocalArtifactStore:
        path = url[len("file://"):] if url.startswith("file://") else url
        if not path:
            raise ConfigError(f"artifact URL {url!r} names no folder")
        return cls(path)

    def path(self, digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return os.path.join(self.root, algo, hexd[:2], hexd[2:])

    def put(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or digest_of(data)
        dest = self.path(digest)
        if os.path.exists(dest):
            return digest
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
        return digest

    def get(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {digest} is missing from {self.url}") from None

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))
