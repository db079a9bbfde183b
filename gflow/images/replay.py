"""Replay a run from its recorded image: the old code, the recorded inputs, a new linked run.

The code comes out of the recorded image (``/opt/gflow/code``), or, for a dev-mode run, out of the
recorded code bundle, never from the current source tree: the flow body is loaded from that copy
and every task runs in the recorded image. The new run records ``replay_of`` and the same image
tag; no task result is taken from the cache (a replay that reused results would prove nothing).
The outputs are then compared digest by digest: the flow's result and every task run's result,
matched by input key (task identity + inputs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gflow.errors import ConfigError
from gflow.images.errors import ImageError
from gflow.store import RunRecord, Store, open_store


@dataclass
class ReplayReport:
    original: RunRecord
    run_id: str
    state: Any
    image: str
    identical: bool
    compared: int = 0
    differences: list[str] = field(default_factory=list)
    error: BaseException | None = None


def _extract(tar_bytes: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def code_from_image(client: Any, tag: str) -> tuple[Path, list[Path]]:
    """Copy ``/opt/gflow/code`` and ``image.json`` out of ``tag``; returns the folder and its PYTHONPATH."""
    import docker.errors

    from gflow.images.context import ROOT
    from gflow.images.lock import cache_root

    dest = cache_root() / "replay" / hashlib.sha256(tag.encode()).hexdigest()[:24]
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            container = client.containers.create(tag, entrypoint=["true"], command=[])
        except docker.errors.ImageNotFound:
            raise ImageError(f"the recorded image {tag} is not on the docker engine (pull or rebuild it)") from None
        try:
            for path in (f"{ROOT}/image.json", f"{ROOT}/code"):
                try:
                    stream, _ = container.get_archive(path)
                except docker.errors.NotFound:
                    if path.endswith("code"):
                        continue  # a deps-only (dev) image
                    raise ImageError(f"{tag} is not a gflow image (no {path})") from None
                _extract(b"".join(stream), dest)
        finally:
            container.remove(force=True)
        (dest / ".complete").write_text(tag)
    meta = json.loads((dest / "image.json").read_text())
    paths = [dest / p.removeprefix(f"{ROOT}/") for p in meta.get("pythonpath", [])]
    return dest, paths


def code_from_bundle(artifacts: Any, digest: str) -> tuple[Path, list[Path]]:
    from gflow.images.lock import cache_root

    dest = cache_root() / "replay" / digest.replace(":", "-")
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        _extract(artifacts.get(digest), dest)
        (dest / ".complete").write_text(digest)
    manifest = json.loads((dest / "gflow-bundle.json").read_text())
    return dest, [dest / p for p in manifest["pythonpath"]]


def load_flow(flow_path: str, pythonpath: list[Path]) -> Any:
    """Load the flow ``flow_path`` named at record time from the extracted code, not the source tree."""
    from gflow._loader import load_target
    from gflow.flows import Flow

    where, _, name = flow_path.rpartition(":")
    for p in reversed(pythonpath):
        sys.path.insert(0, str(p))
    if where.endswith(".py"):
        base = os.path.basename(where)
        for p in pythonpath:
            if (p / base).is_file():
                return load_target(f"{p / base}:{name}", Flow)
        raise ImageError(f"the recorded image has no {base} on its PYTHONPATH ({', '.join(map(str, pythonpath))})")
    sys.modules.pop(where, None)
    return load_target(flow_path, Flow)


def _task_images(st: Store, rec: RunRecord, flow_tag: str) -> dict[str, str]:
    """Tags that tasks with their own image ran in (from the handles the executor described)."""
    out = {}
    for t in st.task_runs(rec.id):
        tag = (t.handle or "").split(" container=")[0]
        if tag and tag != flow_tag and ":" in tag:
            out[t.task] = tag
    return out


def compare(st: Store, old: RunRecord, new: RunRecord) -> tuple[int, list[str]]:
    """Compare result digests of two runs: the flow's result and each task run's, matched by key."""
    diffs = []
    if old.result_ref != new.result_ref:
        diffs.append(f"flow result: {old.result_ref} (original) != {new.result_ref} (replay)")
    if old.state != new.state:
        diffs.append(f"state: {old.state.value} (original) != {new.state.value} (replay)")
    olds = {(t.task, t.ikey or t.key): t for t in st.task_runs(old.id)}
    news = {(t.task, t.ikey or t.key): t for t in st.task_runs(new.id)}
    for k, t in sorted(olds.items(), key=lambda kv: kv[1].id):
        n = news.get(k)
        if n is None:
            diffs.append(f"task {t.name} ({t.id}): no task run with the same inputs in the replay")
        elif t.result_ref != n.result_ref:
            diffs.append(f"task {t.name}: {t.result_ref} ({t.id}) != {n.result_ref} ({n.id})")
    for k, n in news.items():
        if k not in olds:
            diffs.append(f"task {n.name} ({n.id}): ran in the replay but not in the original")
    return len(olds) + 1, diffs


def replay(run_id: str, *, executor: Any = None, store: Any = None, artifacts: Any = None,
           profile: str | None = None, observer: Any = None, run_id_new: str | None = None) -> ReplayReport:
    """Replay ``run_id`` (see the module docstring).

    Raises:
        RunNotFound: for an unknown run. ConfigError: for a run that recorded no image.
        ImageError: when the recorded image (or bundle) cannot be found.
    """
    from gflow.artifacts import open_artifacts
    from gflow.config import load_profile
    from gflow.executors import get_executor
    from gflow.executors.docker import DockerExecutor, split_image_record
    from gflow.serialization import decode

    prof = load_profile(profile, store=store, artifacts=artifacts)
    st = open_store(prof.store, events=prof.events)
    try:
        rec = st.get_run(run_id)
        tag, bundle = split_image_record(rec.image_tag)
        if not tag:
            raise ConfigError(f"run {rec.id} recorded no image tag (executor {rec.executor!r}); only runs made with an "
                              f"image executor (docker, aws_batch, volcano) can be replayed by image")
        arts = open_artifacts(prof.artifacts)
        spec = executor if executor is not None else "docker"
        ex = get_executor(spec)
        if isinstance(ex, DockerExecutor):
            ex.pin(tag, bundle)
            ex.task_images.update(_task_images(st, rec, tag))
            ex.attach_artifacts(arts)
            _, pythonpath = code_from_bundle(arts, bundle) if bundle else code_from_image(ex.client, tag)
        else:
            if hasattr(ex, "image") and getattr(ex, "image", None) is None:
                ex.image = tag
            if bundle:
                _, pythonpath = code_from_bundle(arts, bundle)
            else:
                from gflow.images.builders import docker_client

                _, pythonpath = code_from_image(docker_client(), tag)
        try:
            flow = load_flow(rec.flow_path, pythonpath)
            params = decode(rec.params, arts.get)

            def link(new_id: str, engine: Any):
                fields: dict[str, Any] = {"replay_of": rec.id, "flow_path": rec.flow_path}
                if not st.get_run(new_id).image_tag:
                    fields["image_tag"] = rec.image_tag
                st.update_run(new_id, **fields)
                return observer(new_id, engine) if observer else None

            result = flow.run(params=params, executor=ex, store=st, artifacts=arts, tags=rec.tags, return_run=True,
                              observer=link, cache=False, run_id=run_id_new)
        finally:
            ex.close()
        new = st.get_run(result.id)
        compared, diffs = compare(st, rec, new)
        return ReplayReport(rec, new.id, new.state, rec.image_tag or tag, not diffs, compared, diffs, result.error)
    finally:
        if st is not prof.store:
            st.close()
