"""Artifact stores, chosen by URL: a local folder (default) or ``s3://bucket/prefix``."""

from __future__ import annotations

from gflow.artifacts.base import ArtifactStore, digest_of
from gflow.artifacts.local import LocalArtifactStore
from gflow.errors import ConfigError


def open_artifacts(url: str | ArtifactStore) -> ArtifactStore:
    """Open an artifact store from its URL (or return one unchanged)."""
    if isinstance(url, ArtifactStore):
        return url
    if url.startswith("s3://"):
        from gflow.artifacts.s3 import S3ArtifactStore  # boto3 is imported only when used

        return S3ArtifactStore.from_url(url)
    if url.startswith("gs://"):
        from gflow.artifacts.gcs import GcsArtifactStore  # google-cloud-storage is imported only when used

        return GcsArtifactStore.from_url(url)
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"unknown artifact store URL {url!r}; use a folder, file:///path or s3://bucket/prefix")
    return LocalArtifactStore.from_url(url)


__all__ = ["ArtifactStore", "LocalArtifactStore", "digest_of", "open_artifacts"]
