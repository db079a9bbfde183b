"""``gflow serve``: a task behind real HTTP on 127.0.0.1 (batching, validation, token, healthz, metrics)."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gflow.errors import InvalidArguments
from gflow.serve import Metrics, TaskServer, _Batcher, serve

sys.path.insert(0, str(Path(__file__).parent / "resources"))
import warm_tasks  # noqa: E402

RES = Path(__file__).parent / "resources"


def post(url: str, body: object, token: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/", data=data, method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_one_call_answers_its_result_and_bad_bodies_name_the_parameter():
    with serve(f"{RES / 'warm_tasks.py'}:add", port=0) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        assert post(srv.url, {"a": 2, "b": 5}) == (200, {"result": 7})
        assert post(srv.url, {"a": 2}) == (200, {"result": 3})
        code, body = post(srv.url, {"a": "two"})
        assert code == 400 and "'a'" in body["error"]
        code, body = post(srv.url, {"a": 1, "c": 2})
        assert code == 400 and "'c'" in body["error"]
        code, body = post(srv.url, {"b": 2})
        assert code == 400 and "'a'" in body["error"]
        code, body = post(srv.url, [1, 2])
        assert code == 400 and "JSON object" in body["error"]
        code, body = post(srv.url, b'{"a": 1, "a": 2}')
        assert code == 400 and "twice" in body["error"]
        code, body = post(srv.url, b"{not json")
        assert code == 400 and "not JSON" in body["error"]
        assert get(srv.url + "/healthz") == (200, json.dumps({"ok": True, "task": "add"}))
        code, text = get(srv.url + "/metrics")
        assert code == 200 and 'gflow_serve_requests_total{task="add",code="200"} 2' in text
        assert 'code="400"} 6' in text and 'quantile="0.99"' in text


def test_concurrent_requests_are_grouped_into_batches_and_a_bad_one_fails_alone():
    warm_tasks.BATCHES.clear()
    with TaskServer(warm_tasks.embed, port=0, max_wait_ms=200) as srv:
        seqs = ["a", "bb", "bad", "dddd", "eeeee", "ff"]
        results: dict[str, tuple[int, dict]] = {}
        threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, post(srv.url, {"seqs": s})))
                   for s in seqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results["dddd"] == (200, {"result": 12}) and results["a"] == (200, {"result": 3})
        assert results["bad"][0] == 500 and "bad sequence" in results["bad"][1]["error"]
        assert max(warm_tasks.BATCHES) > 1  # grouped (then run one by one after the failure)
        assert srv.metrics.batches < len(seqs)


def test_a_token_is_needed_when_set_but_healthz_stays_open():
    with TaskServer(warm_tasks.add, port=0, token="s3cret") as srv:
        assert post(srv.url, {"a": 1})[0] == 401
        assert post(srv.url, {"a": 1}, token="wrong")[0] == 401
        assert post(srv.url, {"a": 1}, token="s3cret") == (200, {"result": 2})
        assert get(srv.url + "/metrics")[0] == 401 and get(srv.url + "/metrics", "s3cret")[0] == 200
        assert get(srv.url + "/healthz")[0] == 200


def test_bad_server_options_are_one_line():
    with pytest.raises(InvalidArguments, match="--max-batch must be an integer of at least 1, got 0"):
        TaskServer(warm_tasks.embed, port=0, max_batch=0)


def test_the_batch_window_closes_on_the_clock_not_on_a_sleep():
    now = [0.0]

    class Clock:
        def __call__(self) -> float:
            return now[0]

    b = _Batcher.__new__(_Batcher)  # no thread: take() driven by hand
    import queue

    b.q, b.max_batch, b.max_wait, b.metrics, b.clock = queue.SimpleQueue(), 3, 1.0, Metrics(), Clock()
    from gflow.serve import _Pending

    for i in range(5):
        b.q.put(_Pending({"i": i}))
    assert [p.arguments["i"] for p in b.take() or []] == [0, 1, 2]  # full at max_batch
    now[0] = 10.0
    b.q.put(None)
    assert [p.arguments["i"] for p in b.take() or []] == [3, 4]  # window passed: what is there goes
    assert b.take() is None


def test_the_cli_serves_a_task_from_a_file(tmp_path):
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**__import__("os").environ, "GFLOW_HOME": str(tmp_path), "GFLOW_SERVE_TOKEN": "tok"}
    p = subprocess.Popen([sys.executable, "-m", "gflow", "serve", f"{RES / 'warm_tasks.py'}:add", "--port", str(port)],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if get(url + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        assert post(url, {"a": 40, "b": 2}, token="tok") == (200, {"result": 42})
        assert post(url, {"a": 40})[0] == 401  # the token came from GFLOW_SERVE_TOKEN
    finally:
        p.terminate()
        p.wait(10)
