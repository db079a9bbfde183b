"""Google Cloud Batch, issue 23 items 3 and 6: the gs:// artifact store is checked before the run is recorded
(one line, nothing created), and a flow's plain image reference is run as given. The real google-cloud-batch
client against the fake Batch v1 server, artifacts through gcp-storage-emulator (fixtures as in
tests/test_gcp_batch.py)."""

from __future__ import annotations

import pytest

from gflow.errors import ConfigError
from gflow.states import State

pytestmark = pytest.mark.integration
pytest.importorskip("google.cloud.batch_v1")
pytest.importorskip("gcp_storage_emulator")

from tests import test_gcp_batch as shared  # noqa: E402
from tests.gcp_fake import tasks  # noqa: E402

emulator, gcp, executor = shared.emulator, shared.gcp, shared.executor  # the fixtures of tests/test_gcp_batch.py
IMAGE, BUCKET = shared.IMAGE, shared.BUCKET


@pytest.mark.parametrize("artifacts, words", [
    ("gs://no-such-bucket/runs", ["bucket 'no-such-bucket' does not exist; create it (gcloud storage"]),
    ("LOCAL", ["the gcp-batch executor needs a gs:// artifact store"]),
])
def test_a_missing_bucket_or_a_local_store_is_refused_before_the_run_is_recorded(gcp, store, tmp_path, artifacts,
                                                                                  words):
    arts = str(tmp_path / "local") if artifacts == "LOCAL" else artifacts
    with pytest.raises(ConfigError) as ei:
        tasks.squares.run(3, executor=executor(gcp), artifacts=arts)
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert store.list_runs() == [] and gcp.requests["create"] == 0


def test_a_flows_plain_image_reference_is_run_as_given(gcp, store):
    ex = executor(gcp, image=None)  # nothing pinned on the executor, no registry, no Docker: the flow names it
    r = tasks.squares_in_plain_image.run(3, executor=ex, artifacts=f"gs://{BUCKET}/runs", return_run=True)
    assert r.state is State.SUCCEEDED and r.value == 5, r.error
    assert store.get_run(r.id).image_tag == IMAGE
    assert ex.image_key(tasks.square) == IMAGE  # what the tasks' cache keys hold
    assert {t.handle.split()[0] for t in store.task_runs(r.id)} == {IMAGE}, [t.handle for t in store.task_runs(r.id)]
