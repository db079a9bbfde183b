"""The S3 artifact store: ``s3://bucket/prefix``, the same content-addressed layout as the local store
(``<prefix>/sha256/ab/cdef...``, blobs and slots alike), used by the driver and by workers in
containers alike. It implements the backend primitives of :class:`~gflow.artifacts.base.ArtifactStore`
(``read``, ``write``, ``exists``); verification is the base class's: a blob read must hash to its
digest (:class:`~gflow.errors.ArtifactCorrupt` otherwise).

- Blobs are immutable: a blob write is conditional (``If-None-Match: *``), so an existing object is
  never replaced, in one request. Slots (outcome records) are replaced; they also carry the hash of
  their content as ``x-amz-meta-gflow-content``, and a slot whose bytes do not match it (truncated,
  rewritten without gflow) is refused as corrupt.
- Large blobs (``multipart_threshold``, default 64 MiB) go up as multipart uploads through boto3's
  managed transfer, only when absent.
- ``put_many`` uploads in parallel (a thread pool over one thread-safe client), one request per blob.
- Where S3 is: boto3's configuration (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
  ``AWS_PROFILE``), or ``?endpoint=URL&region=R&profile=P`` in the URL. Containers get the URL and the
  endpoint through their job's environment, never credentials baked into an image.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import urllib.parse
from typing import Any

from gflow.artifacts._remote import RemoteStore
from gflow.artifacts.base import check_key, digest_of
from gflow.errors import ArtifactCorrupt, ArtifactNotFound, ConfigError, GflowError

_META = "gflow-content"
_MIB = 1 << 20


class S3ArtifactStore(RemoteStore):
    """Blobs in ``s3://bucket/prefix``.

    Args:
        bucket: The bucket (it must exist: ``aws s3 mb s3://bucket``).
        prefix: Key prefix (no leading or trailing slash needed).
        endpoint_url: S3 endpoint (default: boto3's configuration).
        region: Region of the client (default: boto3's configuration).
        profile: AWS profile (default: boto3's configuration).
        multipart_threshold: Blobs from this size up are uploaded in parts.
        max_workers: Parallel uploads in :meth:`put_many`.
    """

    _pool_prefix = "gflow-s3"
    _corrupt_is_missing = True  # as before the stores shared this code: a corrupt blob reads as missing

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, multipart_threshold: int = 64 * _MIB, max_workers: int = 32,
                 client: Any = None):
        if not bucket or "/" in bucket:
            raise ConfigError(f"S3 artifact store: {bucket!r} is not a bucket name; use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.multipart_threshold = max(5 * _MIB, multipart_threshold)
        self.max_workers = max_workers
        self._client = client
        self._lock = threading.Lock()
        self._pool: cf.ThreadPoolExecutor | None = None
        self._conditional = True
        query = {k: v for k, v in (("endpoint", endpoint_url), ("region", region), ("profile", profile)) if v}
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/") + (f"?{urllib.parse.urlencode(query)}" if query else "")

    @classmethod
    def from_url(cls, url: str) -> S3ArtifactStore:
        """``s3://bucket/prefix[?endpoint=URL&region=R&profile=P&multipart_mb=N]``."""
        p = urllib.parse.urlparse(url)
        if p.scheme != "s3" or not p.netloc:
            raise ConfigError(f"artifact URL {url!r}: expected s3://bucket/prefix")
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(p.query).items()}
        known = {"endpoint", "region", "profile", "multipart_mb"}
        bad = set(q) - known
        if bad:
            raise ConfigError(f"artifact URL {url!r}: unknown options {sorted(bad)}; known: {sorted(known)}")
        try:
            mp = int(q["multipart_mb"]) * _MIB if "multipart_mb" in q else 64 * _MIB
        except ValueError:
            raise ConfigError(f"artifact URL {url!r}: multipart_mb must be an integer") from None
        return cls(p.netloc, p.path, endpoint_url=q.get("endpoint"), region=q.get("region"), profile=q.get("profile"),
                   multipart_threshold=mp)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from gflow.clouds.aws import client, session

                    self._client = client(session(self.region, self.profile), "s3", endpoint_url=self.endpoint_url,
                                          pool=max(10, self.max_workers))
        return self._client

    @property
    def resolved_endpoint(self) -> str:
        """The endpoint the client talks to (for the containers' environment)."""
        return str(self.client.meta.endpoint_url)

    def key(self, digest: str) -> str:
        hexd = check_key(digest).partition(":")[2]
        rest = f"sha256/{hexd[:2]}/{hexd[2:]}"
        return f"{self.prefix}/{rest}" if self.prefix else rest

    def _error(self, e: BaseException, what: str) -> GflowError:
        from gflow.clouds.aws import error_code, translate

        code, status = error_code(e)
        if code == "NoSuchBucket":
            return ConfigError(f"{what}: bucket {self.bucket!r} does not exist; create it "
                               f"(aws s3 mb s3://{self.bucket}) or fix the artifact URL")
        return translate(e, what)

    # -- the store interface ----------------------------------------------------------------------
    def check(self) -> None:
        """Fail early, with the fix, if the bucket is missing or out of reach (HeadBucket)."""
        import botocore.exceptions as bx

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bx.ClientError as e:
            from gflow.clouds.aws import error_code

            code, status = error_code(e)
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(f"artifact store {self.url}: bucket {self.bucket!r} does not exist; create it "
                                  f"(aws s3 mb s3://{self.bucket}) or fix the URL") from None
            if status == 403 or code in ("403", "Forbidden"):
                raise ConfigError(f"artifact store {self.url}: access to bucket {self.bucket!r} is denied; grant "
                                  f"s3:ListBucket, s3:GetObject and s3:PutObject (docs/aws-batch.md)") from None
            if status == 301:
                region = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                raise ConfigError(f"artifact store {self.url}: bucket {self.bucket!r} is in region {region}; add "
                                  f"?region={region} to the URL or set AWS_REGION") from None
            raise self._error(e, f"artifact store {self.url}") from None
        except bx.BotoCoreError as e:
            raise self._error(e, f"artifact store {self.url}") from None

    # -- backend primitives ----------------------------------------------------------------------------
    def write(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """One PUT: conditional (``If-None-Match: *``) for blobs, so an existing one is kept; slots are
        replaced. Large blobs: multipart, after a HEAD."""
        import botocore.exceptions as bx

        from gflow.clouds.aws import error_code

        k = self.key(key)
        meta = {_META: digest_of(data) if replace else key}  # a blob's key is its digest (put just hashed it)
        try:
            if len(data) >= self.multipart_threshold:
                if not replace and self.exists(key):
                    return
                from boto3.s3.transfer import TransferConfig

                cfg = TransferConfig(multipart_threshold=self.multipart_threshold,
                                     multipart_chunksize=max(8 * _MIB, self.multipart_threshold // 4))
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, k, ExtraArgs={"Metadata": meta},
                                           Config=cfg)
                return
            kw: dict[str, Any] = {"Bucket": self.bucket, "Key": k, "Body": data, "Metadata": meta}
            if not replace and self._conditional:
                kw["IfNoneMatch"] = "*"
            try:
                self.client.put_object(**kw)
            except bx.ClientError as e:
                code, status = error_code(e)
                if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return  # the blob is there already: blobs are immutable
                if code == "NotImplemented" and "IfNoneMatch" in kw:  # an S3 look-alike without conditional writes
                    self._conditional = False
                    kw.pop("IfNoneMatch")
                    self.client.put_object(**kw)
                    return
                raise
        except Exception as e:  # noqa: BLE001 - botocore's errors, and boto3's S3UploadFailedError wrapping them
            raise self._error(e, f"storing {key} in {self.url}") from None

    def read(self, key: str) -> bytes:
        """One GET. A slot (its content hash in the metadata differs from its key) is checked here
        against that hash; blobs are checked against their key by the base class."""
        import botocore.exceptions as bx

        from gflow.clouds.aws import error_code

        k = self.key(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=k)
            data: bytes = resp["Body"].read()
        except bx.ClientError as e:
            code, status = error_code(e)
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                raise ArtifactNotFound(f"artifact {key} is missing from {self.url} (s3://{self.bucket}/{k})") from None
            raise self._error(e, f"reading {key} from {self.url}") from None
        except bx.BotoCoreError as e:
            raise self._error(e, f"reading {key} from {self.url}") from None
        claimed = (resp.get("Metadata") or {}).get(_META)
        if claimed and claimed != key and digest_of(data) != claimed:
            raise ArtifactCorrupt(f"slot {key} in {self.url} is corrupt: its {len(data)} bytes do not hash to the "
                                  f"{claimed} it was written with; delete s3://{self.bucket}/{k} and run again")
        return data

    def exists(self, key: str) -> bool:
        import botocore.exceptions as bx

        from gflow.clouds.aws import error_code

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(key))
            return True
        except bx.ClientError as e:
            code, status = error_code(e)
            if status == 404 and code != "NoSuchBucket":
                return False
            raise self._error(e, f"looking up {key} in {self.url}") from None
        except bx.BotoCoreError as e:
            raise self._error(e, f"looking up {key} in {self.url}") from None

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.url!r})"
