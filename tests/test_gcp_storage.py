"""The gs:// artifact store against gcp-storage-emulator on 127.0.0.1 (the real google-cloud-storage client
over HTTP, via STORAGE_EMULATOR_HOST), with a counting, fault-injecting proxy where a test needs one."""

from __future__ import annotations

import hashlib
import os

import pytest

from gflow.errors import ArtifactCorrupt, ArtifactNotFound, ArtifactStoreError, ConfigError

pytestmark = pytest.mark.integration
BUCKET = "gflow-test"


@pytest.fixture(scope="module")
def emulator():
    pytest.importorskip("gcp_storage_emulator")
    pytest.importorskip("google.cloud.storage")
    from tests.gcp_fake.storage import Emulator

    e = Emulator()
    yield e
    e.stop()


@pytest.fixture
def gcs(emulator, monkeypatch):
    emulator.reset()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    return emulator


@pytest.fixture
def proxy(gcs, monkeypatch):
    from tests.gcp_fake.storage import Proxy

    p = Proxy(gcs.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
    yield p
    p.stop()


def raw(store, digest):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    c = storage.Client(project="test", credentials=AnonymousCredentials())
    return c.bucket(store.bucket_name).blob(store.key(digest))


def test_same_layout_and_interface_as_the_local_store(gcs, tmp_path):
    from gflow.artifacts import LocalArtifactStore, digest_of, open_artifacts
    from gflow.artifacts.gcs import GcsArtifactStore

    store = open_artifacts(f"gs://{BUCKET}/team/runs")
    assert isinstance(store, GcsArtifactStore) and store.url == f"gs://{BUCKET}/team/runs"
    local = LocalArtifactStore(tmp_path / "local")
    data = b'{"value":42}'
    d = store.put(data)
    assert d == digest_of(data) == local.put(data)
    assert store.get(d) == data and store.exists(d) and not store.exists(digest_of(b"other"))
    rel = os.path.relpath(local.path(d), local.root)
    assert store.key(d) == f"team/runs/{rel}" and raw(store, d).download_as_bytes() == data
    with pytest.raises(ArtifactNotFound, match=f"artifact {digest_of(b'nope')} is missing from gs://{BUCKET}/team/runs"):
        store.get(digest_of(b"nope"))
    store.put_many({digest_of(bytes([i])): bytes([i]) for i in range(40)})
    assert all(store.exists(digest_of(bytes([i]))) for i in range(40))
    assert store.get_many([digest_of(b"\x01"), digest_of(b"nope")]) == [b"\x01", None]
    store.check()


def test_reads_are_verified_and_blob_writes_are_conditional(proxy):
    from gflow.artifacts.gcs import GcsArtifactStore
    from tests.gcp_fake.storage import Fault

    store = GcsArtifactStore(BUCKET, "p")
    d = store.put(b"the real bytes")
    store.put_many({})
    # every blob upload asks for ifGenerationMatch=0 (the emulator ignores it; GCS answers 412 when it exists)
    uploads = [q for op, _, q in proxy.log if op.startswith("POST upload")]
    assert len(uploads) == 1 and uploads[0]["ifGenerationMatch"] == "0"
    raw(store, d).upload_from_string(b"the fake bytes")  # rewritten behind gflow's back
    with pytest.raises(ArtifactCorrupt, match=f"artifact {d} in gs://{BUCKET}/p is corrupt: its 14 bytes hash to"):
        store.get(d)
    with pytest.raises(ArtifactCorrupt, match="refusing to store a blob"):
        store.put(b"other bytes", d)
    proxy.faults.append(Fault("POST upload:multipart", 412, "At least one of the pre-conditions did not hold."))
    assert store.put(b"the real bytes") == d  # 412: already there, kept
    assert raw(store, d).download_as_bytes() == b"the fake bytes"


def test_outcome_slots_are_replaced_and_checked_against_the_hash_they_were_written_with(gcs):
    from gflow.artifacts.gcs import GcsArtifactStore
    from gflow.images.protocol import outcome_slot

    store = GcsArtifactStore(BUCKET, "p")
    slot = outcome_slot("sha256:" + "ab" * 32)
    assert store.get_slot(slot) is None
    store.put_slot(slot, b'{"kind":"gflow.outcome/v1","ok":false}')
    body = b'{"kind":"gflow.outcome/v1","ok":true}'
    store.put_slot(slot, body)  # a later attempt's record replaces it
    assert store.get_slot(slot) == body
    blob = store.bucket.get_blob(store.key(slot))
    assert blob.metadata["gflow-content"] == "sha256:" + hashlib.sha256(body).hexdigest()
    b = raw(store, slot)
    b.metadata = blob.metadata
    b.upload_from_string(b"truncat")
    with pytest.raises(ArtifactCorrupt, match=f"slot {slot} .* is corrupt"):
        store.get_slot(slot)
    with pytest.raises(ArtifactCorrupt):
        store.get(slot)  # a slot is never a blob


def test_large_blobs_go_up_resumably_in_chunks(proxy):
    from gflow.artifacts.gcs import GcsArtifactStore

    store = GcsArtifactStore(BUCKET, "big", resumable_threshold=1 << 20, chunk_size=512 * 1024)
    data = os.urandom((1 << 20) + 3)
    d = store.put(data)
    assert proxy.counts["POST upload:resumable"] == 1 and proxy.counts["PUT upload:resumable"] == 3
    assert proxy.counts["POST upload:multipart"] == 0
    assert store.get(d) == data
    proxy.counts.clear()
    store.put(b"small")
    assert proxy.counts == {"POST upload:multipart": 1}  # one request for a small blob


def test_a_missing_bucket_no_permission_or_bad_url_says_how_to_fix_it(proxy):
    from gflow.artifacts import open_artifacts
    from gflow.artifacts.gcs import GcsArtifactStore
    from tests.gcp_fake.storage import Fault

    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist; create it \\(gcloud storage"):
        GcsArtifactStore("no-such-bucket", "x").check()
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        GcsArtifactStore("no-such-bucket", "x").put(b"data")
    with pytest.raises(ArtifactNotFound, match="is not an artifact key"):
        GcsArtifactStore(BUCKET, "x").get("../../etc/passwd")
    with pytest.raises(ConfigError, match="unknown options \\['endpiont'\\]"):
        open_artifacts(f"gs://{BUCKET}/x?endpiont=http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="expected gs://bucket/prefix"):
        GcsArtifactStore.from_url("gs:///prefix-only")
    with pytest.raises(ConfigError, match="is not a bucket name"):
        GcsArtifactStore("Upper_Case", "x")
    proxy.faults.append(Fault("GET testIamPermissions", 403, "caller does not have storage.buckets.getIamPolicy"))
    with pytest.raises(ConfigError, match="no permission on bucket 'gflow-test'; grant .* roles/storage.objectUser"):
        GcsArtifactStore(BUCKET, "x").check()
    proxy.faults.append(Fault("POST upload:multipart", 403, "does not have storage.objects.create access"))
    with pytest.raises(ConfigError, match="no permission on bucket 'gflow-test'"):
        GcsArtifactStore(BUCKET, "x").put(b"x")


def test_partial_permissions_name_what_is_missing(gcs, monkeypatch):
    from gflow.artifacts.gcs import GcsArtifactStore

    store = GcsArtifactStore(BUCKET, "x")
    monkeypatch.setattr(type(store.bucket), "test_iam_permissions", lambda self, perms: ["storage.objects.get"])
    with pytest.raises(ConfigError, match="missing: storage.objects.create, storage.objects.list"):
        store.check()


def test_server_errors_become_artifact_store_errors(proxy):
    from gflow.artifacts.base import digest_of
    from gflow.artifacts.gcs import GcsArtifactStore
    from tests.gcp_fake.storage import Fault

    store = GcsArtifactStore(BUCKET, "x")
    d = store.put(b"data")
    proxy.faults.append(Fault("GET media", 400, "bad request"))
    with pytest.raises(ArtifactStoreError, match=f"reading {d} from gs://{BUCKET}/x"):
        store.get(d)
    assert digest_of(b"data") == d


@pytest.mark.parametrize("module, floor", [
    ("gflow.artifacts.gcs", {"gflow.executors", "gflow.flows", "gflow.store", "gflow.images"}),
    ("gflow.clouds.gcp", {"gflow.executors", "gflow.artifacts", "gflow.flows", "gflow.store"}),
    ("gflow.executors.gcp_batch", {"gflow.store", "gflow.flows", "gflow.server"}),
])
def test_the_google_modules_stay_on_their_floors(module, floor):
    from tests.test_layers import _loaded

    loaded = _loaded(module)
    assert not loaded & floor, f"{module} pulls in {sorted(loaded & floor)}"
