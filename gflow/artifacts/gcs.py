"""The Google Cloud Storage artifact store: ``gs://bucket/prefix``, the same content-addressed layout as
the local and S3 stores (``<prefix>/sha256/ab/cdef...``, blobs and slots alike), used by the driver and by
workers on Google Cloud Batch alike. It implements the backend primitives of
:class:`~gflow.artifacts.base.ArtifactStore`; verification is the base class's: a blob read must hash to
its digest (:class:`~gflow.errors.ArtifactCorrupt` otherwise).

- Blobs are immutable: a blob write is conditional (``ifGenerationMatch=0``), so an existing object is
  never replaced, in one request; a 412 answer means it is there already. Slots (outcome records) are
  replaced; they carry the hash of their content in the object metadata (``gflow-content``), and a slot
  whose bytes do not match it (truncated, rewritten without gflow) is refused as corrupt. Reading a slot
  costs two requests (its metadata, then its bytes at that generation); a blob one.
- Blobs from ``resumable_threshold`` (default 8 MiB) up go up as resumable uploads in chunks of
  ``chunk_mb`` (a dropped connection resumes from the last chunk the server has, not from zero).
- ``put_many`` / ``get_many`` work in parallel over one client.
- Where GCS is: Application Default Credentials and project, or ``?project=P`` in the URL;
  ``STORAGE_EMULATOR_HOST`` (``gcp-storage-emulator``, the tests) is honoured, with anonymous credentials.
  Workers get the URL (and an emulator's address) through their job's environment, never credentials.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import urllib.parse
from typing import Any

from gflow.artifacts._remote import RemoteStore
from gflow.artifacts.base import check_key, digest_of
from gflow.errors import ArtifactCorrupt, ArtifactNotFound, ArtifactStoreError, ConfigError, GflowError

_META = "gflow-content"
_MIB = 1 << 20
_CHUNK = 256 * 1024  # resumable chunks must be multiples of 256 KiB
#: what the driver and the workers need on the bucket (roles/storage.objectUser grants them all)
NEEDED = ("storage.objects.create", "storage.objects.get", "storage.objects.list")


class GcsArtifactStore(RemoteStore):
    """Blobs in ``gs://bucket/prefix``.

    Args:
        bucket: The bucket (it must exist: ``gcloud storage buckets create gs://BUCKET --location=REGION``).
        prefix: Object name prefix.
        project: Project the client bills (default: the credentials' project).
        resumable_threshold: Blobs from this size up are uploaded resumably in chunks.
        chunk_size: Size of a resumable chunk (rounded to a multiple of 256 KiB).
        max_workers: Parallel requests in :meth:`put_many` and :meth:`get_many`.
    """

    _pool_prefix = "gflow-gcs"

    def __init__(self, bucket: str, prefix: str = "", *, project: str | None = None,
                 resumable_threshold: int = 8 * _MIB, chunk_size: int = 8 * _MIB, max_workers: int = 32,
                 client: Any = None):
        if not bucket or "/" in bucket or bucket != bucket.lower() or not 3 <= len(bucket) <= 222:
            raise ConfigError(f"GCS artifact store: {bucket!r} is not a bucket name; use gs://bucket/prefix")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.project = project
        self.resumable_threshold = max(_CHUNK, resumable_threshold)
        self.chunk_size = max(_CHUNK, chunk_size // _CHUNK * _CHUNK)
        self.max_workers = max_workers
        self._client = client
        self._bucket: Any = None
        self._lock = threading.Lock()
        self._pool: cf.ThreadPoolExecutor | None = None
        query = {"project": project} if project else {}
        self.url = f"gs://{bucket}/{self.prefix}".rstrip("/") + (f"?{urllib.parse.urlencode(query)}" if query else "")

    @classmethod
    def from_url(cls, url: str) -> GcsArtifactStore:
        """``gs://bucket/prefix[?project=P&resumable_mb=N&chunk_mb=M]``."""
        p = urllib.parse.urlparse(url)
        if p.scheme != "gs" or not p.netloc:
            raise ConfigError(f"artifact URL {url!r}: expected gs://bucket/prefix")
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(p.query).items()}
        known = {"project", "resumable_mb", "chunk_mb"}
        bad = set(q) - known
        if bad:
            raise ConfigError(f"artifact URL {url!r}: unknown options {sorted(bad)}; known: {sorted(known)}")
        try:
            sizes = {k: int(q[k]) * _MIB for k in ("resumable_mb", "chunk_mb") if k in q}
        except ValueError:
            raise ConfigError(f"artifact URL {url!r}: resumable_mb and chunk_mb must be integers") from None
        return cls(p.netloc, p.path, project=q.get("project"),
                   resumable_threshold=sizes.get("resumable_mb", 8 * _MIB), chunk_size=sizes.get("chunk_mb", 8 * _MIB))

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        from google.cloud import storage  # type: ignore[attr-defined]

        from gflow.clouds.gcp import emulator_host, translate

        try:
            if emulator_host():
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project=self.project or "gflow-emulator", credentials=AnonymousCredentials())
            else:
                client = storage.Client(project=self.project)
            import requests.adapters

            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, self.max_workers))
            for prefix in ("https://", "http://"):  # one connection per parallel request in put_many/get_many
                client._http.mount(prefix, adapter)
            return client
        except Exception as e:  # noqa: BLE001 - no credentials, no project
            raise translate(e, f"artifact store {self.url}", project=self.project, error=ConfigError) from None

    @property
    def bucket(self) -> Any:
        if self._bucket is None:
            self._bucket = self.client.bucket(self.bucket_name)
        return self._bucket

    def key(self, digest: str) -> str:
        hexd = check_key(digest).partition(":")[2]
        rest = f"sha256/{hexd[:2]}/{hexd[2:]}"
        return f"{self.prefix}/{rest}" if self.prefix else rest

    def _error(self, e: BaseException, what: str) -> GflowError:
        from gflow.clouds.gcp import status_of, translate

        status, _, _ = status_of(e)
        if status == 404:
            return ConfigError(f"{what}: bucket {self.bucket_name!r} does not exist; create it (gcloud storage "
                               f"buckets create gs://{self.bucket_name} --location=REGION) or fix the artifact URL")
        if status == 403:
            return ConfigError(self._denied(what))
        return translate(e, what, project=self.project, error=ArtifactStoreError)

    def _denied(self, what: str) -> str:
        return (f"{what}: no permission on bucket {self.bucket_name!r}; grant the driver's and the jobs' service "
                f"accounts roles/storage.objectUser on it (gcloud storage buckets add-iam-policy-binding "
                f"gs://{self.bucket_name} --member=serviceAccount:SA --role=roles/storage.objectUser; "
                f"docs/gcp-batch.md)")

    # -- the store interface ----------------------------------------------------------------------
    def check(self) -> None:
        """Fail early, with the fix, if the bucket is missing or the credentials may not read and write
        objects in it (``testIamPermissions``: needs no permission of its own)."""
        what = f"artifact store {self.url}"
        try:
            granted = set(self.bucket.test_iam_permissions(list(NEEDED)))
        except GflowError:
            raise
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            raise self._error(e, what) from None
        missing = [p for p in NEEDED if p not in granted]
        if missing:
            raise ConfigError(self._denied(what) + f" (missing: {', '.join(missing)})")

    # -- backend primitives ----------------------------------------------------------------------------
    def write(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """One upload: conditional (``ifGenerationMatch=0``) for blobs, so an existing one is kept; slots
        are replaced. Large blobs: resumable, in chunks."""
        from google.api_core import exceptions as gx

        blob = self.bucket.blob(self.key(key))
        blob.metadata = {_META: digest_of(data) if replace else key}  # a blob's key is its digest
        cond = None if replace else 0
        try:
            if len(data) >= self.resumable_threshold:  # no size given: the client uploads resumably, in chunks
                blob.chunk_size = self.chunk_size
                blob.upload_from_file(io.BytesIO(data), content_type="application/octet-stream",
                                      if_generation_match=cond)
            else:
                blob.upload_from_string(data, content_type="application/octet-stream", if_generation_match=cond)
        except gx.PreconditionFailed:
            return  # the blob is there already: blobs are immutable
        except GflowError:
            raise
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            raise self._error(e, f"storing {key} in {self.url}") from None

    def read(self, key: str) -> bytes:
        """One GET of the object's bytes (a blob; the base class checks them against the key)."""
        return self._download(self.bucket.blob(self.key(key)), key)

    def _download(self, blob: Any, key: str, generation: int | None = None) -> bytes:
        from google.api_core import exceptions as gx

        try:
            data: bytes = blob.download_as_bytes(if_generation_match=generation)
            return data
        except gx.NotFound as e:
            if "bucket" in str(e).lower() and "object" not in str(e).lower():
                raise self._error(e, f"reading {key} from {self.url}") from None
            raise ArtifactNotFound(f"artifact {key} is missing from {self.url} "
                                   f"(gs://{self.bucket_name}/{self.key(key)})") from None
        except GflowError:
            raise
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            raise self._error(e, f"reading {key} from {self.url}") from None

    def get_slot(self, slot: str) -> bytes | None:
        """The record in a named slot, checked against the content hash it was written with (metadata
        first, then the bytes at that generation); None if none was written."""
        key = check_key(slot)
        try:
            blob = self.bucket.get_blob(self.key(key))
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            raise self._error(e, f"reading {key} from {self.url}") from None
        if blob is None:
            return None
        try:
            data = self._download(blob, key, blob.generation)
        except ArtifactNotFound:
            return None
        claimed = (blob.metadata or {}).get(_META)
        if claimed and claimed != key and digest_of(data) != claimed:
            raise ArtifactCorrupt(f"slot {key} in {self.url} is corrupt: its {len(data)} bytes do not hash to the "
                                  f"{claimed} it was written with; delete gs://{self.bucket_name}/{self.key(key)} "
                                  f"and run again")
        return data

    def exists(self, key: str) -> bool:
        try:
            return bool(self.bucket.blob(self.key(key)).exists())
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            raise self._error(e, f"looking up {key} in {self.url}") from None

    def __repr__(self) -> str:
        return f"GcsArtifactStore({self.url!r})"
