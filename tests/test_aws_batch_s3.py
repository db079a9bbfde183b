"""The S3 artifact store against moto in server mode (real boto3 over HTTP on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os

import pytest
from aws_env import BUCKET, CREDS, REGION, Moto, Proxy

from gflow.errors import ArtifactNotFound, ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto():
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    m = Moto()
    yield m
    m.stop()


@pytest.fixture
def s3(moto, monkeypatch):
    moto.reset()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in {**CREDS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto.url}.items():
        monkeypatch.setenv(k, v)
    client = moto.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def test_same_layout_and_interface_as_the_local_store(s3, tmp_path):
    from gflow.artifacts import LocalArtifactStore, digest_of, open_artifacts
    from gflow.artifacts.s3 import S3ArtifactStore

    store = open_artifacts(f"s3://{BUCKET}/team/runs")
    assert isinstance(store, S3ArtifactStore) and store.url == f"s3://{BUCKET}/team/runs"
    local = LocalArtifactStore(tmp_path / "local")
    data = b'{"value":42}'
    d = store.put(data)
    assert d == digest_of(data) == local.put(data)
    assert store.get(d) == data and store.exists(d) and not store.exists(digest_of(b"other"))
    rel = os.path.relpath(local.path(d), local.root)
    assert s3.head_object(Bucket=BUCKET, Key=f"team/runs/{rel}")["ContentLength"] == len(data)
    with pytest.raises(ArtifactNotFound, match=f"artifact {digest_of(b'nope')} is missing from s3://{BUCKET}/team/runs"):
        store.get(digest_of(b"nope"))
    store.put_many({digest_of(bytes([i])): bytes([i]) for i in range(40)})
    assert all(store.exists(digest_of(bytes([i]))) for i in range(40))
    assert store.get_many([digest_of(b"\x01"), digest_of(b"nope")]) == [b"\x01", None]


def test_reads_are_verified_and_blobs_are_never_replaced(s3):
    from gflow.artifacts.s3 import S3ArtifactStore
    from gflow.errors import ArtifactCorrupt

    store = S3ArtifactStore(BUCKET, "p")
    d = store.put(b"the real bytes")
    s3.put_object(Bucket=BUCKET, Key=store.key(d), Body=b"the fake bytes")  # rewritten behind gflow's back
    with pytest.raises(ArtifactCorrupt, match=f"artifact {d} in s3://{BUCKET}/p is corrupt: its 14 bytes hash to"):
        store.get(d)
    with pytest.raises(ArtifactCorrupt, match="refusing to store a blob"):
        store.put(b"other bytes", d)
    # a blob write is conditional (If-None-Match: *): what is there is kept, and put says where it is
    assert store.put(b"the real bytes") == d
    assert s3.get_object(Bucket=BUCKET, Key=store.key(d))["Body"].read() == b"the fake bytes"


def test_outcome_slots_are_replaced_and_checked_against_the_hash_they_were_written_with(s3):
    from gflow.artifacts.s3 import S3ArtifactStore
    from gflow.errors import ArtifactCorrupt
    from gflow.images.protocol import outcome_slot

    store = S3ArtifactStore(BUCKET, "p")
    slot = outcome_slot("sha256:" + "ab" * 32)
    assert store.get_slot(slot) is None
    store.put_slot(slot, b'{"kind":"gflow.outcome/v1","ok":false}')
    store.put_slot(slot, b'{"kind":"gflow.outcome/v1","ok":true}')  # a later attempt's record replaces it
    assert store.get_slot(slot) == b'{"kind":"gflow.outcome/v1","ok":true}'
    head = s3.head_object(Bucket=BUCKET, Key=store.key(slot))
    body = b'{"kind":"gflow.outcome/v1","ok":true}'
    assert head["Metadata"]["gflow-content"] == "sha256:" + hashlib.sha256(body).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=store.key(slot), Body=b"truncat", Metadata=head["Metadata"])
    with pytest.raises(ArtifactCorrupt, match=f"slot {slot} .* is corrupt"):
        store.get_slot(slot)
    with pytest.raises(ArtifactCorrupt):
        store.get(slot)  # a slot is never a blob


def test_large_blobs_go_up_in_parts_and_only_once(moto, s3, monkeypatch):
    from gflow.artifacts.s3 import S3ArtifactStore

    proxy = Proxy(moto.url)
    try:
        store = S3ArtifactStore(BUCKET, "big", endpoint_url=proxy.url, multipart_threshold=5 << 20)
        data = os.urandom((12 << 20) + 3)
        d = store.put(data)
        assert proxy.counts["s3:POST?uploads"] == 1 and proxy.counts["s3:PUT?partNumber&uploadId"] == 2
        head = s3.head_object(Bucket=BUCKET, Key=store.key(d))
        assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-2")
        assert store.get(d) == data
        proxy.counts.clear()
        store.put(data)  # content-addressed: already there, not uploaded again
        assert sum(proxy.counts.values()) == 1  # one HEAD
    finally:
        proxy.stop()


def test_a_missing_bucket_or_bad_url_says_how_to_fix_it(s3):
    from gflow.artifacts import open_artifacts
    from gflow.artifacts.s3 import S3ArtifactStore

    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist; create it \\(aws s3 mb"):
        S3ArtifactStore("no-such-bucket", "x").check()
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        S3ArtifactStore("no-such-bucket", "x").put(b"data")
    with pytest.raises(ArtifactNotFound, match="is not an artifact key"):
        S3ArtifactStore(BUCKET, "x").get("../../etc/passwd")
    S3ArtifactStore(BUCKET, "x").check()
    with pytest.raises(ConfigError, match="unknown options \\['endpiont'\\]"):
        open_artifacts(f"s3://{BUCKET}/x?endpiont=http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="expected s3://bucket/prefix"):
        S3ArtifactStore.from_url("s3:///prefix-only")
    explicit = open_artifacts(f"s3://{BUCKET}/x?endpoint={s3.meta.endpoint_url}&region={REGION}")
    assert explicit.endpoint_url == s3.meta.endpoint_url and "endpoint=" in explicit.url


def test_expired_credentials_are_a_config_error(moto, s3):
    from aws_env import Fault

    from gflow.artifacts.s3 import S3ArtifactStore

    proxy = Proxy(moto.url, faults=[Fault("s3:PUT", None, 400, "ExpiredToken", "The provided token has expired.")])
    try:
        with pytest.raises(ConfigError, match="AWS rejected the credentials \\(ExpiredToken.*refresh them"):
            S3ArtifactStore(BUCKET, "p", endpoint_url=proxy.url).put(b"x" * 10)
    finally:
        proxy.stop()
