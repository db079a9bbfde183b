"""A real Docker engine, a local registry and a locally made base image, for the integration tests.

Nothing here reaches a public registry: the engine is Debian's ``dockerd`` started on a private
socket (its own data root, no bridge, no iptables), the base image is a ``debootstrap`` of Debian
bookworm with Python imported into that engine, and the registry is Debian's ``docker-registry``
on a free loopback port. The debootstrapped root filesystem is cached as a tarball (keyed by its
recipe) under ``$GFLOW_TEST_CACHE`` (default ``/var/cache/gflow-test``, or ``~/.cache/gflow-test``
when that is not writable), so only the first session pays the minute it takes.

Run as a script to fill the cache ahead of time: ``python tests/docker_env.py``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: What the base image is made of; its hash names the cached root filesystem.
BASE_RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3-minimal", "python3-venv"],
    "mirror": os.environ.get("GFLOW_TEST_MIRROR", "http://deb.debian.org/debian"),
}


class Unavailable(Exception):
    """The machine cannot run the engine (the message says exactly why)."""


def recipe_key() -> str:
    return hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def base_tag() -> str:
    return f"gflow-test-base:{recipe_key()}"


def cache_dir() -> Path:
    env = os.environ.get("GFLOW_TEST_CACHE")
    candidates = [Path(env)] if env else [Path("/var/cache/gflow-test"), Path.home() / ".cache" / "gflow-test"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise Unavailable(f"no writable cache folder among {[str(c) for c in candidates]}")


def missing_tools() -> list[str]:
    need = {"dockerd": "docker.io", "debootstrap": "debootstrap", "docker-registry": "docker-registry"}
    return [f"{tool} (apt package {pkg})" for tool, pkg in need.items() if shutil.which(tool) is None]


def ensure_base_rootfs(log=print) -> Path:
    """The cached tarball of the base root filesystem, made with debootstrap if absent."""
    out = cache_dir() / f"base-{recipe_key()}.tar"
    if out.exists():
        return out
    if os.geteuid() != 0:
        raise Unavailable("debootstrap needs root to make the base image")
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (apt-get install debootstrap)")
    work = Path(tempfile.mkdtemp(prefix="gflow-debootstrap-", dir=out.parent))
    root = work / "root"
    t0 = time.time()
    log(f"debootstrap {BASE_RECIPE['suite']} into {root} (once; cached as {out})")
    try:
        cmd = ["debootstrap", f"--variant={BASE_RECIPE['variant']}", "--include=" + ",".join(BASE_RECIPE["include"]),
               BASE_RECIPE["suite"], str(root), BASE_RECIPE["mirror"]]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise Unavailable(f"debootstrap failed ({res.returncode}): {(res.stdout + res.stderr)[-2000:]}")
        # slim it: docs, man pages, apt lists and caches are not needed to run Python
        for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
                    "var/lib/apt/lists"):
            shutil.rmtree(root / sub, ignore_errors=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tmp), "."], check=True)
        os.replace(tmp, out)
        log(f"base root filesystem ready in {time.time() - t0:.0f}s ({out.stat().st_size / 1e6:.0f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DockerEnv:
    """A running private dockerd (and optionally a registry); :meth:`stop` tears everything down."""

    root: Path
    socket_path: Path = field(init=False)
    base_url: str = field(init=False)
    procs: list[subprocess.Popen] = field(default_factory=list)
    registry: str | None = None

    def __post_init__(self) -> None:
        self.socket_path = self.root / "docker.sock"
        self.base_url = f"unix://{self.socket_path}"

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.base_url, timeout=300)

    def stop(self) -> None:
        if not self.procs and not self.root.exists():
            return  # stopped already
        try:
            c = self.client()
            for ctr in c.containers.list(all=True):
                ctr.remove(force=True)
            c.close()
        except Exception:
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs.clear()
        # dockerd leaves overlay mounts behind if it was killed; unmount before deleting
        mounts = Path("/proc/mounts").read_text().splitlines() if Path("/proc/mounts").exists() else []
        for line in sorted((m.split()[1] for m in mounts if str(self.root) in m.split()[1]), reverse=True):
            subprocess.run(["umount", "-l", line], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def start_dockerd(log=print) -> DockerEnv:
    """Start dockerd as the issue describes: overlay2, no iptables, no bridge, private roots and socket."""
    if os.geteuid() != 0:
        raise Unavailable(f"dockerd needs root here (tests run as uid {os.geteuid()})")
    missing = missing_tools()
    if missing:
        raise Unavailable("missing: " + ", ".join(missing) + "; install with scripts/test.sh (as root)")
    root = Path(tempfile.mkdtemp(prefix="gflow-dockerd-", dir="/tmp"))
    env = DockerEnv(root)
    atexit.register(env.stop)  # the daemons run in their own sessions: stop them even if a test run aborts
    (root / "data").mkdir()
    logf = open(root / "dockerd.log", "w")
    cmd = ["dockerd", "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false", "--bridge=none",
           f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}", f"--pidfile={root / 'dockerd.pid'}",
           "-H", env.base_url]
    p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    env.procs.append(p)
    deadline = time.time() + 60
    while time.time() < deadline:
        if p.poll() is not None:
            text = (root / "dockerd.log").read_text()[-3000:]
            env.stop()
            raise Unavailable(f"dockerd exited with {p.returncode}: {text}")
        if env.socket_path.exists():
            try:
                c = env.client()
                c.ping()
                c.close()
                return env
            except Exception:
                pass
        time.sleep(0.2)
    text = (root / "dockerd.log").read_text()[-3000:]
    env.stop()
    raise Unavailable(f"dockerd did not answer within 60s: {text}")


def import_base(env: DockerEnv, log=print) -> str:
    """Import the cached base root filesystem into the engine as :func:`base_tag`."""
    tag = base_tag()
    client = env.client()
    try:
        try:
            client.images.get(tag)
            return tag
        except Exception:
            pass
        tarball = ensure_base_rootfs(log)
        repo, _, version = tag.partition(":")
        with open(tarball, "rb") as f:
            client.api.import_image_from_data(f, repository=repo, tag=version)
        client.images.get(tag)
        return tag
    finally:
        client.close()


def start_registry(env: DockerEnv) -> str:
    """Start Debian's docker-registry on a free loopback port; returns ``127.0.0.1:PORT``."""
    port = free_port()
    conf = env.root / "registry.yml"
    store = env.root / "registry-data"
    store.mkdir()
    conf.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {store}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    logf = open(env.root / "registry.log", "w")
    p = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True)
    env.procs.append(p)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            raise Unavailable(f"docker-registry exited: {(env.root / 'registry.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                env.registry = f"127.0.0.1:{port}"
                return env.registry
        except OSError:
            time.sleep(0.1)
    raise Unavailable("docker-registry did not listen within 30s")


if __name__ == "__main__":
    print(ensure_base_rootfs())


@dataclass
class Engine:
    """What a module of Docker tests shares: the daemon, the base image, a registry and a gflow wheel."""

    env: DockerEnv
    base: str
    registry: str
    wheel: str


def engine_for_tests():
    """Generator for a module-scoped pytest fixture: starts the engine (or skips), stops it after.

    The wheel is a snapshot of gflow for the images: the tags stay put even if the checkout is edited
    while the tests run.
    """
    import pytest

    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'gflow[docker]')")
    try:
        env = start_dockerd()
    except Unavailable as e:
        pytest.skip(f"cannot start dockerd here: {e}")
    try:
        base = import_base(env)
        registry = start_registry(env)
    except Unavailable as e:
        env.stop()
        pytest.skip(f"docker test environment incomplete: {e}")
    except BaseException:
        env.stop()
        raise
    from gflow.images.wheel import gflow_wheel

    name, data = gflow_wheel()
    wheel = env.root / name
    wheel.write_bytes(data)
    try:
        yield Engine(env, base, registry, str(wheel))
    finally:
        env.stop()
