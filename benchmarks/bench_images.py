"""Images: tag computation, no-op rebuilds, code-only rebuilds and dev-mode redeploys.

    python benchmarks/bench_images.py            # needs root, docker.io and debootstrap (as the tests)
    python benchmarks/bench_images.py --tag-only # just the tag timing (no engine)

Starts a private dockerd exactly like tests/test_docker.py (and reuses its cached base image), builds
the example flow of tests/resources/docker_flow, and reports medians:

- tag of a 1,000-file project (render the context + hash it), vs. only reading and hashing the same
  files (the floor);
- rebuild of an unchanged flow (the tag exists: no build at all);
- a code-only change (only the code layer is rebuilt) vs. a full build (``nocache``), as a ratio;
- a dev-mode redeploy of a logic change (new code bundle, same deps image, run to the result) vs.
  the same change through a rebuilt image.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]
from _common import median_time, table

os.environ["GFLOW_HOME"] = tempfile.mkdtemp(prefix="gflow-bench-")

from gflow.images import Image
from gflow.images.context import render
from gflow.images.lock import parse_lock


def make_project(root: Path, n: int = 1000) -> Path:
    for i in range(n):
        p = root / f"pkg{i // 100}" / f"mod{i % 100}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"VALUE = {i}\n" * 40)
    for j in range((n + 99) // 100):
        (root / f"pkg{j}" / "__init__.py").write_text("")
    (root / ".gitignore").write_text("*.log\n")
    for i in range(200):
        (root / f"ignored{i}.log").write_text("x" * 1000)
    return root


def bench_tag(reps: int) -> list[dict]:
    from importlib.metadata import version

    tmp = Path(tempfile.mkdtemp(prefix="gflow-bench-proj-"))
    proj = make_project(tmp / "proj")
    lock = parse_lock("".join(f"{n}=={version(n)} --hash=sha256:{'0' * 64}\n" for n in ("pydantic", "rich", "click")))
    image = Image(base="base:1")

    def tag() -> str:
        return render(image, name="gflow-bench", base_dir=str(proj), lock=lock).tag

    def floor() -> None:
        for dirpath, _, files in os.walk(proj):
            for f in files:
                if not f.endswith(".log"):
                    with open(os.path.join(dirpath, f), "rb") as fh:
                        hashlib.sha256(fh.read()).digest()

    t_first = time.perf_counter()
    tag()
    first = time.perf_counter() - t_first
    med, _ = median_time(tag, reps)
    med_floor, _ = median_time(floor, reps)
    shutil.rmtree(tmp)
    return [{"measure": "tag of a 1,000-file project (+200 ignored)", "median_s": f"{med:.4f}",
             "baseline": f"read+sha256 only: {med_floor:.4f}s", "ratio": f"{med / med_floor:.1f}x",
             "note": f"first call {first:.4f}s"}]


def bench_engine(reps: int) -> list[dict]:
    import docker_env

    from gflow._loader import load_target
    from gflow.flows import Flow
    from gflow.images.builders import DockerBuilder
    from gflow.images.context import flow_context
    from gflow.images.wheel import gflow_wheel

    env = docker_env.start_dockerd()
    rows = []
    try:
        base = docker_env.import_base(env)
        name, data = gflow_wheel()
        wheel = env.root / name
        wheel.write_bytes(data)
        os.environ.update(DOCKER_HOST=env.base_url, GFLOW_TEST_BASE_IMAGE=base, GFLOW_WHEEL=str(wheel))
        work = Path(tempfile.mkdtemp(prefix="gflow-bench-flow-"))
        proj = work / "docker_flow"
        shutil.copytree(ROOT / "tests" / "resources" / "docker_flow", proj,
                        ignore=shutil.ignore_patterns("__pycache__"))
        builder = DockerBuilder(base_url=env.base_url)

        def load() -> Flow:
            for m in ("docker_flow", "helpers"):
                sys.modules.pop(m, None)
            return load_target(f"{proj}/docker_flow.py:squares", Flow)

        edits = iter(range(1, 10**6))

        def change_code() -> None:
            """A logic change in a task (its version changes, so nothing comes from the cache)."""
            n = next(edits)
            (proj / "helpers.py").write_text(f"def scale(v: int) -> int:\n    return v + {n}\n")
            src = proj / "docker_flow.py"
            src.write_text(re.sub(r"return scale\(x \* x\).*", f"return scale(x * x)  # edit {n}", src.read_text()))

        ctx = flow_context(load())
        ctx.fetch_wheels()  # the wheelhouse is on the host; building is what is timed
        t0 = time.perf_counter()
        builder.build(ctx)
        first = time.perf_counter() - t0
        full, full_times = median_time(lambda: builder.build(ctx, nocache=True), max(2, reps // 2))
        rows.append({"measure": "full build (nocache)", "median_s": f"{full:.2f}",
                     "note": f"first build {first:.2f}s; runs {[round(t, 2) for t in full_times]}"})

        unchanged, _ = median_time(lambda: builder.ensure(load_ctx(load)), reps)
        res = builder.ensure(load_ctx(load))
        assert not res.built
        rows.append({"measure": "rebuild of an unchanged flow (render + tag lookup, no build)",
                     "median_s": f"{unchanged:.3f}", "baseline": f"full build {full:.2f}s",
                     "ratio": f"{unchanged / full:.3f}"})

        logs = []

        def code_only() -> None:
            change_code()
            r = builder.ensure(load_ctx(load))
            assert r.built
            logs.append(r.log)

        code, _ = median_time(code_only, reps)
        log = logs[-1]
        steps = [i for i, ln in enumerate(log) if ln.startswith("Step ")]
        def instruction(i: int) -> str:
            words = log[i].split(" : ", 1)[1].split()
            return " ".join(words[:2]) if words[0] == "COPY" else words[0]

        fresh = [instruction(i) for k, i in enumerate(steps)
                 if instruction(i) != "FROM"
                 and not any("Using cache" in ln for ln in log[i:steps[k + 1] if k + 1 < len(steps) else None])]
        rows.append({"measure": "code-only change: rebuild", "median_s": f"{code:.2f}",
                     "baseline": f"full build {full:.2f}s", "ratio": f"{code / full:.2f}",
                     "note": f"{len(steps) - len(fresh)} of {len(steps)} steps cached; ran: {', '.join(fresh)}"})

        # a logic change shipped: through a rebuilt image, and through dev mode
        def image_redeploy() -> None:
            change_code()
            flow = load()
            assert flow.run(n=2, executor="docker").value is not None

        image_t, _ = median_time(image_redeploy, reps)
        load().run(n=2, executor="docker://?dev=1")  # builds the deps-only image once

        def dev_redeploy() -> None:
            change_code()
            flow = load()
            assert flow.run(n=2, executor="docker://?dev=1").value is not None

        dev_t, _ = median_time(dev_redeploy, reps)
        rows.append({"measure": "logic change -> result, rebuilt image (3 containers)", "median_s": f"{image_t:.2f}"})
        rows.append({"measure": "logic change -> result, dev mode (bundle, no build)", "median_s": f"{dev_t:.2f}",
                     "baseline": f"rebuilt image {image_t:.2f}s", "ratio": f"{dev_t / image_t:.2f}"})
        shutil.rmtree(work, ignore_errors=True)
    finally:
        env.stop()
    return rows


def load_ctx(load):
    from gflow.images.context import flow_context

    return flow_context(load())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tag-only", action="store_true")
    args = ap.parse_args()
    print(f"# bench_images  python {platform.python_version()}, {os.cpu_count()} cpu, {platform.platform()}")
    rows = bench_tag(max(args.reps, 7))
    if not args.tag_only:
        rows += bench_engine(args.reps)
    print(table(rows, ["measure", "median_s", "baseline", "ratio", "note"]))


if __name__ == "__main__":
    main()
