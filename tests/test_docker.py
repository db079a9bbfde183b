"""Images end to end with a real Docker engine (see tests/docker_env.py for how it is started).

Build the example flow's image, run it with the Docker executor, replay it by tag after its source
was changed and moved, push to a real registry, show that a changed dependency changes the tag,
and that failures (task errors, version mismatch, out of memory, build errors, a missing base) are
clear. Everything runs against a private dockerd that the module starts and tears down.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import docker_env
import pytest
from conftest import RESOURCES, cli

from gflow.states import State
from gflow.usage import usage_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


Engine = docker_env.Engine


@pytest.fixture(scope="module")
def engine():
    yield from docker_env.engine_for_tests()


@pytest.fixture
def denv(engine, monkeypatch):
    """This test talks to the private engine, and the example flow builds on the local base image."""
    monkeypatch.setenv("DOCKER_HOST", engine.env.base_url)
    monkeypatch.setenv("GFLOW_TEST_BASE_IMAGE", engine.base)
    monkeypatch.setenv("GFLOW_WHEEL", engine.wheel)
    monkeypatch.delenv("GFLOW_TEST_PACKAGES", raising=False)
    return engine


@pytest.fixture
def project(tmp_path):
    dest = tmp_path / "docker_flow"
    shutil.copytree(RESOURCES / "docker_flow", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def load(project: Path, name: str):
    """Load a flow of the example project afresh (its module is re-executed from the file)."""
    from gflow._loader import load_target
    from gflow.flows import Flow

    for mod in ("docker_flow", "helpers"):
        sys.modules.pop(mod, None)
    return load_target(f"{project}/docker_flow.py:{name}", Flow)


def run_id_of(stderr: str) -> str:
    m = re.search(r"run (\S+) (SUCCEEDED|FAILED|CANCELLED)", stderr)
    assert m, stderr
    return m.group(1)


def change_code(project: Path) -> None:
    (project / "helpers.py").write_text("def scale(v: int) -> int:\n    return v + 1\n")
    src = project / "docker_flow.py"
    src.write_text(src.read_text().replace("return scale(x * x)", "return scale(x * x) * 1"))


def test_build_run_and_replay_after_the_source_changed(denv, project, tmp_path, store):
    target = f"{project}/docker_flow.py:squares"
    t0 = time.perf_counter()
    res = cli("build", target, timeout=600)
    assert res.returncode == 0, res.stderr
    tag = res.stdout.strip()
    assert re.fullmatch(r"gflow-squares:[0-9a-f]{16}", tag) and " built " in res.stderr
    first_build = time.perf_counter() - t0
    res = cli("build", target)
    assert res.returncode == 0 and res.stdout.strip() == tag and "present, not rebuilt" in res.stderr

    res = cli("run", target, "-e", "docker", "-p", "n=4", "--no-progress", timeout=300)
    assert res.returncode == 0, res.stderr
    assert '"value": 14.0' in res.stdout
    run_id = run_id_of(res.stderr)
    rec = store.get_run(run_id)
    assert rec.image_tag == tag and rec.executor == "docker"
    trs = store.task_runs(run_id)
    assert len(trs) == 5 and all(t.state is State.SUCCEEDED and t.handle.startswith(tag + " container=")
                                 for t in trs)

    # edit the code (other outputs now) and move the project away: replay must not need it
    change_code(project)
    moved = project.rename(tmp_path / "moved_flow")
    res = cli("replay", run_id, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "outputs identical: yes" in res.stdout
    new_id = re.search(r"run (\S+) SUCCEEDED", res.stdout).group(1)
    new = store.get_run(new_id)
    assert (new.replay_of, new.image_tag, new.flow_path) == (run_id, tag, rec.flow_path)
    assert new.result_ref == rec.result_ref
    assert [t.state for t in store.task_runs(new_id)] == [State.SUCCEEDED] * 5  # ran again, not cached
    res = cli("replay", run_id, "--executor", "local", timeout=300)  # the image's code, run on this host
    assert res.returncode == 0 and "outputs identical: yes" in res.stdout, res.stdout + res.stderr

    # the changed source is a new image with other outputs
    res = cli("run", f"{moved}/docker_flow.py:squares", "-e", "docker", "-p", "n=4", "--no-progress", timeout=300)
    assert res.returncode == 0, res.stderr
    changed = store.get_run(run_id_of(res.stderr))
    assert changed.image_tag != tag and changed.image_tag.startswith("gflow-squares:")
    assert '"value": 18.0' in res.stdout
    print(f"first build {first_build:.1f}s")


def test_a_changed_dependency_changes_the_tag_and_push(denv, project, monkeypatch):
    import docker

    from gflow.images.builders import registry_has

    target = f"{project}/docker_flow.py:squares"

    def dry_tag(packages: str) -> str:
        res = cli("build", target, "--dry-run", env={"GFLOW_TEST_PACKAGES": packages}, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    plain, old, new = dry_tag(""), dry_tag("six==1.16.0"), dry_tag("six==1.17.0")
    assert len({plain, old, new}) == 3
    unpinned = dry_tag("six")
    assert dry_tag("six") == unpinned  # resolved once to an exact lock, then stable

    reg = denv.registry
    res = cli("build", target, "--push", reg, env={"GFLOW_TEST_PACKAGES": "six==1.17.0"}, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{reg}/{new}" and f"pushed {reg}/{new}" in res.stderr
    assert registry_has(reg, new)
    res = cli("build", target, "--push", reg, env={"GFLOW_TEST_PACKAGES": "six==1.17.0"})
    assert "present, not rebuilt" in res.stderr and "pushed" not in res.stderr

    # the locked package is inside, installed from the wheelhouse with no network in the build
    client = docker.DockerClient(base_url=denv.env.base_url)
    try:
        out = client.containers.run(new, entrypoint=["python", "-c", "import six, gflow; print(six.__version__)"],
                                    network_mode="none", remove=True)
        assert out.decode().strip() == "1.17.0"
        client.images.remove(new)  # gone from the engine, but the registry has it: pulled, not built
        res = cli("build", target, "--push", reg, env={"GFLOW_TEST_PACKAGES": "six==1.17.0"})
        assert res.returncode == 0 and " pulled " in res.stderr, res.stderr
        client.images.get(new)
    finally:
        client.close()

    res = cli("build", target, "--push", f"127.0.0.1:{docker_env.free_port()}",
              env={"GFLOW_TEST_PACKAGES": "six==1.17.0"})
    assert res.returncode == 1 and "unreachable" in res.stderr


def test_task_errors_version_mismatch_and_memory_limits(denv, project, store):
    from gflow.errors import TaskFailed
    from gflow.executors.docker import DockerExecutor

    failing = load(project, "failing")
    r = failing.run(executor="docker", return_run=True)
    assert r.state is State.FAILED and isinstance(r.error, TaskFailed)
    assert r.error.error_type == "ValueError" and r.error.error_message == "no luck"
    assert "Traceback" in r.error.traceback and "docker_flow.py" in r.error.traceback
    old_tag = store.get_run(r.id).image_tag

    greedy = load(project, "greedy")
    r = greedy.run(megabytes=256, executor="docker", return_run=True)
    assert r.state is State.FAILED and "out of memory" in str(r.error)
    assert greedy.run(megabytes=8, executor="docker") == 8 * 1024 * 1024

    change_code(project)
    squares = load(project, "squares")  # the driver has new code, the image the old
    r = squares.run(n=2, executor=DockerExecutor(image=old_tag), return_run=True)
    assert r.state is State.FAILED
    assert "TaskVersionMismatch" in str(r.error) and "rebuild the image" in str(r.error)


def test_a_task_can_have_its_own_image(denv, project, store):
    from gflow.executors.docker import DockerExecutor
    from gflow.images.context import task_context

    mixed = load(project, "mixed")
    r = mixed.run(executor="docker", return_run=True)
    assert r.state is State.SUCCEEDED and r.value == ["1.17.0", "3.0"]
    rec = store.get_run(r.id)
    handles = {t.name: t.handle.split(" container=")[0] for t in store.task_runs(r.id)}
    six_tag = task_context(sys.modules["docker_flow"].six_version, "mixed").tag
    assert handles == {"six_version": six_tag, "total": rec.image_tag}
    assert all(usage_of(t.info)["peak_memory_bytes"] > 0 for t in store.task_runs(r.id))  # measured in the container
    assert six_tag.startswith("gflow-mixed-six_version:")

    # an image without gflow in it cannot run calls: a clear error, not a hang
    r = mixed.run(executor=DockerExecutor(image=denv.base), return_run=True)
    assert r.state is State.FAILED and "gflow" in str(r.error)


def test_build_failures_are_clear_and_record_no_run(denv, project, store, monkeypatch):
    from gflow.images import BaseImageMissing, BuildFailed, Image
    from gflow.images.builders import DockerBuilder
    from gflow.images.context import render

    squares = load(project, "squares")
    ctx = render(squares.image.model_copy(update={"python": "python3-missing"}), name="gflow-broken",
                 base_dir=str(project))
    with pytest.raises(BuildFailed) as ei:
        DockerBuilder(base_url=denv.env.base_url).build(ctx)
    msg = str(ei.value)
    assert "RUN python3-missing -m venv" in msg and "not found" in msg and "returned a non-zero code" in msg

    monkeypatch.setenv("GFLOW_TEST_BASE_IMAGE", "gflow-no-such-base:1")
    squares = load(project, "squares")
    with pytest.raises(BaseImageMissing, match="gflow-no-such-base:1"):
        squares.run(n=2, executor="docker")
    assert store.list_runs() == []  # a failed build leaves no half-recorded run
    assert isinstance(squares.image, Image)


def test_dev_mode_redeploys_code_without_a_rebuild_and_replays(denv, project, store):
    squares = load(project, "squares")
    r1 = squares.run(n=3, executor="docker://?dev=1", return_run=True)
    assert r1.state is State.SUCCEEDED and r1.value.value == 5.0
    rec1 = store.get_run(r1.id)
    tag1, _, bundle1 = rec1.image_tag.partition("#bundle=")
    assert tag1.startswith("gflow-squares-deps:") and bundle1.startswith("sha256:")

    change_code(project)
    t0 = time.perf_counter()
    squares = load(project, "squares")
    r2 = squares.run(n=3, executor="docker://?dev=1", return_run=True)
    redeploy = time.perf_counter() - t0
    assert r2.state is State.SUCCEEDED and r2.value.value == 8.0
    tag2, _, bundle2 = store.get_run(r2.id).image_tag.partition("#bundle=")
    assert tag2 == tag1 and bundle2 != bundle1  # same deps image, new code bundle
    assert redeploy < 30, f"dev-mode redeploy took {redeploy:.1f}s"

    res = cli("replay", r1.id, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "outputs identical: yes" in res.stdout
    new_id = re.search(r"run (\S+) SUCCEEDED", res.stdout).group(1)
    assert store.get_run(new_id).image_tag == rec1.image_tag
    print(f"dev-mode redeploy {redeploy:.1f}s")


def test_replay_of_a_run_without_an_image_is_refused(denv, store):
    from flows_basic import map_reduce

    rid = map_reduce.run(n=2, executor="inline", return_run=True).id
    res = cli("replay", rid)
    assert res.returncode == 1 and "recorded no image tag" in res.stderr



def test_killing_a_container_mid_task_loses_nothing(denv, project, store):
    """SIGKILL a running container, TRIALS times: its call is retried, nothing is lost or recorded twice."""
    import os
    import random
    import threading

    import docker

    trials = int(os.environ.get("GFLOW_FAULT_TRIALS", "20"))
    client = docker.DockerClient(base_url=denv.env.base_url)
    flow = load(project, "naps")
    n, lost, dup, retried = 3, 0, 0, 0
    for _ in range(trials):
        def kill_one() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                running = client.containers.list(filters={"label": "org.gflow.call", "status": "running"})
                if running:
                    time.sleep(random.random() * 0.3)
                    try:
                        random.choice(running).kill()
                    except docker.errors.APIError:
                        continue  # it ended meanwhile
                    return
                time.sleep(0.05)

        th = threading.Thread(target=kill_one)
        th.start()
        res = flow.run(n, 1.0, executor="docker", return_run=True)
        th.join()
        assert res.state is State.SUCCEEDED, res.error
        assert res.value == sum(i * i for i in range(n))
        trs = [t for t in store.task_runs(res.id) if t.name == "nap"]
        lost += sum(1 for t in trs if t.state is not State.SUCCEEDED)
        per: dict[str, int] = {}
        for e in store.events(res.id):
            if e.task_run_id and e.state is State.SUCCEEDED:
                per[e.task_run_id] = per.get(e.task_run_id, 0) + 1
        dup += sum(c - 1 for c in per.values())
        retried += sum(1 for t in trs if t.attempt > 1)
    assert (lost, dup) == (0, 0)
    assert retried >= trials // 2
    print(f"\nDocker container SIGKILL: {trials} trials, lost 0, duplicated 0, retried {retried}")
