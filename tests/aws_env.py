"""AWS on 127.0.0.1 for the tests: moto in server mode (real boto3 over HTTP), a counting and
fault-injecting HTTP proxy in front of it, and a stand-in container runtime for moto's Batch.

moto's Batch runs each job (each array child) in a thread that drives a Docker client: it creates a
container from the job definition's image with the job's command and environment, waits for it,
copies its output into CloudWatch Logs and records the exit code. Without a Docker engine,
:class:`Runtime` is that client: it runs the container's command (``gflow worker ...``, the image's
entrypoint being ``gflow``) as a real subprocess with exactly the job's environment, so the real
worker reads its call from moto's S3 and writes its outcome there. Everything else (job states, array
children, DescribeJobs/ListJobs, TerminateJob, logs) is moto's own. The tests with a real dockerd
(tests/test_aws_batch_docker.py) leave moto's Docker client alone.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
#: what a job needs to reach moto's S3 (moto accepts any keys; on AWS the job role provides them)
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
QUEUE, BUCKET = "gflow-queue", "gflow-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    """``moto_server`` in this process (ThreadedMotoServer) on a free loopback port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def client(self, service: str, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=endpoint or self.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30).read()

    def stop(self) -> None:
        self.server.stop()


def setup_batch(moto: Moto, queue: str = QUEUE, bucket: str = BUCKET, *, fargate: bool = False) -> dict[str, str]:
    """A role, a compute environment, a job queue and a bucket in moto (what docs/aws-batch.md sets up)."""
    iam, batch, s3 = moto.client("iam"), moto.client("batch"), moto.client("s3")
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    role = iam.create_role(RoleName=f"{queue}-job", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    if fargate:
        ec2 = moto.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
        sg = ec2.create_security_group(GroupName=f"{queue}-sg", Description="gflow", VpcId=vpc)["GroupId"]
        ce = batch.create_compute_environment(
            computeEnvironmentName=f"{queue}-ce", type="MANAGED", state="ENABLED", serviceRole=role,
            computeResources={"type": "FARGATE", "maxvCpus": 16, "subnets": [subnet], "securityGroupIds": [sg]})
    else:
        ce = batch.create_compute_environment(computeEnvironmentName=f"{queue}-ce", type="UNMANAGED",
                                              state="ENABLED", serviceRole=role)
    batch.create_job_queue(jobQueueName=queue, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}])
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {"role": role, "queue": queue, "bucket": bucket}


# -- a counting, fault-injecting proxy --------------------------------------------------------------------
@dataclass
class Fault:
    """Answer ``op`` with an error ``times`` times (``None``: always), without reaching moto; or, with
    ``drop``, pass the request on and then close the connection without an answer (a lost response)."""

    op: str
    times: int | None = None
    status: int = 429
    code: str = "TooManyRequestsException"
    message: str = "Too Many Requests"
    drop: bool = False


@dataclass
class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream``: counts requests by operation and answers
    some with injected faults. Operations: a Batch request's path is ``/v1/<operation>`` (``submitjob``);
    S3 requests are ``s3:<METHOD>`` plus their sorted query keys (``s3:POST?uploads`` starts a multipart
    upload, ``s3:PUT?partNumber&uploadId`` uploads a part)."""

    upstream: str
    counts: Counter = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        proxy = self
        host, port = self.upstream.split("//")[1].split(":")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                if path.startswith("/v1/"):
                    op = path.rstrip("/").rsplit("/", 1)[-1]
                else:
                    keys = sorted(q.split("=")[0] for q in query.split("&") if q and not q.startswith("x-id"))
                    op = f"s3:{self.command}" + (f"?{'&'.join(keys)}" if keys else "")
                fault = proxy.hit(op)
                if fault is not None and not fault.drop:
                    if op.startswith("s3:"):  # S3 speaks XML
                        data = (f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message></Error>").encode()
                        kind = "application/xml"
                    else:
                        data = json.dumps({"__type": fault.code, "message": fault.message}).encode()
                        kind = "application/json"
                    self.send_response(fault.status)
                    self.send_header("x-amzn-ErrorType", fault.code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                conn.request(self.command, self.path, body, dict(self.headers.items()))
                resp = conn.getresponse()
                data = resp.read()
                if fault is not None:  # drop: moto did the work, the client never hears of it
                    conn.close()
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hit(self, op: str) -> Fault | None:
        with self.lock:
            self.counts[op] += 1
            for f in self.faults:
                if f.op == op and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the container runtime moto's Batch drives -------------------------------------------------------------
class Container:
    """One job's 'container': ``gflow <command>`` in a subprocess with the job's environment only."""

    def __init__(self, runtime: Runtime, image: str, command: list[str], environment: dict[str, str]):
        self.runtime = runtime
        self.image = image
        self.command = command
        self.environment = environment
        self.id = f"fake-{id(self):x}"
        self.attrs: dict[str, Any] = {"NetworkSettings": {"Networks": {}, "IPAddress": "127.0.0.1"}}
        self.lines: list[str] = []
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(runtime.home), "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(runtime.pythonpath), **environment}
        runtime.gate.wait()
        if runtime.closed:  # the test is over: nothing runs any more
            argv = ["true"]
        elif image in runtime.noop:
            argv = [sys.executable, "-c", "print('this image does not run gflow')"]
        else:
            argv = [sys.executable, "-m", "gflow", *command]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.lines.append(f"{stamp} {line.rstrip()}")

    @property
    def status(self) -> str:
        return "running" if self.proc.poll() is None else "exited"

    def reload(self) -> None:
        pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, **_: Any) -> dict[str, int]:
        rc = self.proc.wait()
        self._reader.join(5)
        return {"StatusCode": 128 - rc if rc < 0 else rc}  # a signal: 128 + its number, as Docker reports

    def logs(self, stdout: bool = True, stderr: bool = True, **_: Any) -> bytes:
        self._reader.join(5)
        return ("\n".join(self.lines) + "\n").encode() if stdout and self.lines else b""

    def remove(self, **_: Any) -> None:
        pass


class Runtime:
    """Stands in for the Docker client of moto's Batch jobs (``Job.docker_client``).

    Args:
        pullable: Images that exist (anything else fails to start, as an unpullable image does).
        noop: Images whose 'entrypoint' exits 0 without running gflow.
    """

    def __init__(self, home: Path, pullable: set[str], noop: set[str] | None = None):
        self.home = home
        self.pullable = set(pullable)
        self.noop = set(noop or ())
        self.pythonpath = [str(ROOT / "tests"), str(ROOT)]
        self.started: list[Container] = []
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False
        self.lock = threading.Lock()

    @property
    def containers(self) -> Runtime:
        return self

    def run(self, image: str, command: list[str], environment: dict[str, str], **_: Any) -> Container:
        if image not in self.pullable:
            raise RuntimeError(f"CannotPullContainerError: pull access denied for {image}")
        c = Container(self, image, list(command), dict(environment))
        with self.lock:
            self.started.append(c)
        return c

    def running(self) -> int:
        with self.lock:
            return sum(1 for c in self.started if c.status == "running")

    def kill_all(self) -> None:
        self.closed = True
        self.gate.set()
        with self.lock:
            for c in self.started:
                c.kill()

    def install(self, monkeypatch: Any) -> None:
        """Make moto's Batch jobs run their containers here."""
        import moto.batch.models

        monkeypatch.setattr(moto.batch.models.Job, "docker_client", property(lambda _job: self), raising=False)
        fix_moto_shared_environment(monkeypatch)


def fix_moto_shared_environment(patch: Any = None) -> None:
    """moto 5.2 bug: every child of an array job shares one ``containerOverrides`` dict, and each child
    (and each DescribeJobs of one) appends its ``AWS_BATCH_JOB_ID`` to that shared environment list, so
    under concurrency a child can read a sibling's id and run the sibling's call (and the list grows to
    N entries). gflow reported those children as "SUCCEEDED, but no outcome record". Each job gets
    its own copy here. ``patch``: a pytest monkeypatch (undone after the test), else patched for good."""
    import copy

    import moto.batch.models

    original = moto.batch.models.Job.__init__
    if getattr(original, "_gflow_fixed", False):
        return

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.container_overrides = copy.deepcopy(self.container_overrides)

    init._gflow_fixed = True  # type: ignore[attr-defined]
    if patch is not None:
        patch.setattr(moto.batch.models.Job, "__init__", init)
    else:
        moto.batch.models.Job.__init__ = init


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)
