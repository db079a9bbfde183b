"""Content-addressed blob storage interface."""

from __future__ import annotations

import abc
import hashlib


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ArtifactStore(abc.ABC):
    """Blobs by ``sha256:<hex>`` digest. Writes are idempotent; reads verify nothing is missing."""

    url: str

    @abc.abstractmethod
    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data``; returns its digest."""

    @abc.abstractmethod
    def get(self, digest: str) -> bytes:
        """Read a blob; raises ArtifactNotFound naming the digest and the store."""

    @abc.abstractmethod
    def exists(self, digest: str) -> bool: ...

    def put_many(self, blobs: dict[str, bytes]) -> None:
        for digest, data in blobs.items():
            if not self.exists(digest):
                self.put(data, digest)
