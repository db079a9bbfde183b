"""Artifact store interface: content-addressed blobs, verified on read, plus named slots.

Two kinds of entries share one key space of ``sha256:<64 hex>`` keys:

- **Blobs** (:meth:`ArtifactStore.put` / :meth:`ArtifactStore.get`): the key is the sha256 of the
  bytes. ``put`` refuses bytes that do not hash to the digest it is given; ``get`` hashes what it read
  and raises :class:`~gflow.errors.ArtifactCorrupt` (naming the digest and the store) when it does
  not match, so a blob someone rewrote in a shared bucket or folder is never used.
- **Slots** (:meth:`ArtifactStore.put_slot` / :meth:`ArtifactStore.get_slot`): a named, replaceable
  record whose key is *not* the hash of its content: the outcome record of a worker call lives at
  ``gflow.images.protocol.outcome_slot(spec)``. Slot contents are not verified (they cannot be);
  readers treat them as untrusted input and verify every blob a slot points to through ``get``.

A backend implements three primitives on raw keys (:meth:`read`, :meth:`write`, :meth:`exists`);
the contract above is built on them here, once for every backend.
"""

from __future__ import annotations

import abc
import hashlib
import re

from gflow.errors import ArtifactCorrupt, ArtifactNotFound

_KEY = re.compile(r"sha256:[0-9a-f]{64}\Z")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_key(key: object) -> str:
    """``key`` if it is a ``sha256:<64 lowercase hex>`` key.

    Raises:
        ArtifactNotFound: anything else (no blob or slot can have that key).
    """
    if type(key) is not str or not _KEY.match(key):
        raise ArtifactNotFound(f"{key!r:.90} is not an artifact key (sha256:<64 hex digits>)")
    return key


class ArtifactStore(abc.ABC):
    """Blobs by ``sha256:<hex>`` digest, verified on read; named slots for records like worker outcomes."""

    url: str

    # -- backend primitives (raw keys, no verification) ---------------------------------------------------
    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises ArtifactNotFound naming the key and the store."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store ``data`` under ``key`` atomically (readers never see a partial write). With
        ``replace=False`` an existing entry is kept (blobs are immutable)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    # -- the contract ------------------------------------------------------------------------------------
    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store a blob; returns its digest.

        Raises:
            ArtifactCorrupt: ``digest`` is given and is not the sha256 of ``data``.
        """
        if digest is not None and self.exists(check_key(digest)):
            return digest
        actual = digest_of(data)
        if digest is not None and digest != actual:
            raise ArtifactCorrupt(f"refusing to store a blob under {digest} in {self.url}: its content hashes to "
                                  f"{actual}")
        self.write(actual, data)
        return actual

    def get(self, digest: str) -> bytes:
        """Read a blob and verify it against its digest.

        Raises:
            ArtifactNotFound: the blob is missing (naming the digest and the store).
            ArtifactCorrupt: what is stored does not hash to ``digest``.
        """
        data = self.read(check_key(digest))
        actual = digest_of(data)
        if actual != digest:
            raise ArtifactCorrupt(f"artifact {digest} in {self.url} is corrupt: its {len(data)} bytes hash to "
                                  f"{actual}; refusing to use it (delete it so that it is written again)")
        return data

    def put_many(self, blobs: dict[str, bytes]) -> None:
        for digest, data in blobs.items():
            if not self.exists(digest):
                self.put(data, digest)

    def put_slot(self, slot: str, data: bytes) -> None:
        """Write (or replace) the record in a named slot."""
        self.write(check_key(slot), data, replace=True)

    def get_slot(self, slot: str) -> bytes | None:
        """The record in a named slot (unverified: untrusted input), or None if none was written."""
        try:
            return self.read(check_key(slot))
        except ArtifactCorrupt:
            raise
        except ArtifactNotFound:
            return None
