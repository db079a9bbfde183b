"""The Google Cloud Batch handler of the shared polling monitor, driven by hand with a fake clock and a
stand-in for the Batch API (no HTTP): what each refresh asks for, when long listings wait, and what a job
that ended still owes."""

from __future__ import annotations

import pytest

pytest.importorskip("google.cloud.batch_v1")

from tests.gcp_fake import tasks  # noqa: E402


class Api:
    """Batch as the handler sees it: job counts and per-state task lists, set by the test."""

    def __init__(self):
        self.state = "RUNNING"
        self.by_state: dict[str, list[int]] = {}
        self.calls: list[tuple[str, str]] = []
        self.deleted: list[str] = []

    def get(self, name):
        self.calls.append(("get", name))
        counts = {k: str(len(v)) for k, v in self.by_state.items() if v}
        return {"uid": "uid-1", "status": {"state": self.state, "taskGroups": {"group0": {"counts": counts}}}}

    def tasks(self, name, state):
        self.calls.append(("tasks", state))
        return [{"name": f"{name}/taskGroups/group0/tasks/{i}",
                 "status": {"state": state, "statusEvents": [{"taskState": state, "eventTime": "2026-01-01T00:00:00Z",
                                                              **({"taskExecution": {"exitCode": 0}}
                                                                 if state != "RUNNING" else {})}]}}
                for i in self.by_state.get(state, [])]

    def delete(self, name):
        self.deleted.append(name)


@pytest.fixture
def setup():
    from gflow.executors.base import Call
    from gflow.executors.gcp_batch._monitor import BatchHandler, Handle, Job

    api = Api()
    h = BatchHandler(api, None, project="p", region="us-central1", list_gap=15)
    job = Job("projects/p/locations/us-central1/jobs/j1", 20_000, "img", None)
    handles = []
    for i in range(job.count):
        handle = Handle(Call(f"c{i}", "r", tasks.square, (i,), {}), job, i, 0, "sha256:" + "0" * 64)
        job.elements[i] = [handle]
        handles.append(handle)
    h.add(job)
    return api, h, job, handles


def listed(api):
    out = [s for k, s in api.calls if k == "tasks"]
    api.calls.clear()
    return out


def test_long_listings_wait_for_the_gap_or_a_tenth_of_the_job(setup):
    api, h, job, handles = setup
    h.refresh(handles, 0)
    assert listed(api) == []  # nothing moved: one get, no listing
    api.by_state["SUCCEEDED"] = list(range(1500))
    h.refresh(handles, 1)
    assert listed(api) == ["SUCCEEDED"] and sum(h.check_if_completed(x) is not None for x in handles) == 1500
    api.by_state["SUCCEEDED"] = list(range(1600))
    h.refresh(handles, 2)
    assert listed(api) == []  # over a page, 100 more (< a tenth of 20,000), 1 s after the last listing: waits
    h.refresh(handles, 17)
    assert listed(api) == ["SUCCEEDED"]  # the gap passed
    assert h.check_if_completed(handles[1550]) is not None and h.check_if_completed(handles[10]) is None
    api.by_state["SUCCEEDED"] = list(range(4000))
    h.refresh(handles, 18)
    assert listed(api) == ["SUCCEEDED"]  # 2,400 more: a tenth of the job moved


def test_starts_are_listed_only_when_more_run_than_were_seen_starting(setup):
    api, h, job, handles = setup
    api.by_state["RUNNING"] = list(range(10))
    h.refresh(handles, 0)
    assert listed(api) == ["RUNNING"] and h.check_if_running(handles[3]) is not None
    api.by_state["RUNNING"] = list(range(5, 10))
    api.by_state["SUCCEEDED"] = list(range(5))
    h.refresh(handles, 1)
    assert listed(api) == ["SUCCEEDED"]  # fewer running, and those ended: no RUNNING listing


def test_an_ended_job_is_listed_once_more_and_what_it_still_owes_is_settled(setup):
    api, h, job, handles = setup
    api.by_state["SUCCEEDED"] = list(range(1500))
    h.refresh(handles, 0)
    listed(api)
    api.by_state["SUCCEEDED"] = list(range(1600))
    api.by_state["FAILED"] = [1600]
    api.state = "FAILED"
    h.refresh(handles, 1)  # the job ended: listed at once, whatever the gap
    assert sorted(listed(api)) == ["FAILED", "SUCCEEDED"]
    assert h.check_if_completed(handles[1599])["status"]["state"] == "SUCCEEDED"
    assert h.check_if_completed(handles[1600])["status"]["state"] == "FAILED"
    owed = h.check_if_completed(handles[19_999])
    assert owed["gflow_missing"] and owed["status"]["state"] == "FAILED"
    _, msg = h._failure(handles[19_999], h.info(handles[19_999], owed), "job j1 task 19999", owed)
    assert "the job ended FAILED without this task finishing" in msg


def test_kill_deletes_a_job_only_when_nothing_of_it_is_wanted(setup):
    api, h, job, handles = setup
    for x in handles[:10]:
        x.cancelled = True
    h.kill(handles[:10])
    assert api.deleted == []
    for x in handles[10:]:
        x.cancelled = True
    h.kill(handles[10:])
    h.kill(handles[10:])
    assert api.deleted == [job.name]
