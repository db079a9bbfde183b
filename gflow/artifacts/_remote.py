"""What the object-store artifact stores (``s3://``, ``gs://``) share: a conditional ``put`` in one request,
and ``put_many``/``get_many`` over a lazily made thread pool."""

from __future__ import annotations

import concurrent.futures as cf
import threading

from gflow.artifacts.base import ArtifactStore, check_key, digest_of
from gflow.errors import ArtifactCorrupt, ArtifactNotFound


class RemoteStore(ArtifactStore):
    """Base of :class:`~gflow.artifacts.s3.S3ArtifactStore` and :class:`~gflow.artifacts.gcs.GcsArtifactStore`.

    A subclass sets ``url``, ``max_workers``, ``_lock`` (a :class:`threading.Lock`) and ``_pool = None`` in its
    constructor, and names its pool threads with ``_pool_prefix``. ``_corrupt_is_missing``: whether
    :meth:`get_many` reads a corrupt blob as missing (None) rather than raising ArtifactCorrupt.
    """

    url: str
    max_workers: int
    _lock: threading.Lock
    _pool: cf.ThreadPoolExecutor | None
    _pool_prefix = "gflow-artifacts"
    _corrupt_is_missing = False

    def put(self, data: bytes, digest: str | None = None) -> str:
        """As the base class (refuses bytes that do not hash to ``digest``), in one conditional upload
        instead of a lookup and an upload."""
        actual = digest_of(data)
        if digest is not None and check_key(digest) != actual:
            raise ArtifactCorrupt(f"refusing to store a blob under {digest} in {self.url}: its content hashes to "
                                  f"{actual}")
        self.write(actual, data)
        return actual

    def put_many(self, blobs: dict[str, bytes]) -> None:
        """Upload in parallel, one conditional upload per blob (no lookup first: it would cost as much)."""
        if len(blobs) <= 1:
            for d, data in blobs.items():
                self.put(data, d)
            return
        for f in [self.pool.submit(self.put, data, d) for d, data in blobs.items()]:
            f.result()

    def get_many(self, digests: list[str]) -> list[bytes | None]:
        """Read blobs in parallel (verified); a missing one is None (other errors raise)."""

        def one(d: str) -> bytes | None:
            try:
                return self.get(d)
            except ArtifactCorrupt:
                if self._corrupt_is_missing:
                    return None
                raise
            except ArtifactNotFound:
                return None

        return list(self.pool.map(one, digests))

    @property
    def pool(self) -> cf.ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix=self._pool_prefix)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
