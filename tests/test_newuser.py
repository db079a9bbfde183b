"""What a new user found (issue 23): --param typos and repeated JSON keys, Retry(count) positional,
machine-readable `gflow runs ls`."""

import json

import pytest
from conftest import RESOURCES, cli

import gflow
from gflow.errors import InvalidArguments

FLOWS = str(RESOURCES / "flows_basic.py")


def test_retry_count_is_positional():
    assert gflow.Retry(3).count == 3
    r = gflow.Retry(2, 1.5, 3.0, 10.0, on=ValueError)
    assert (r.count, r.backoff, r.factor, r.max_backoff, r.on) == (2, 1.5, 3.0, 10.0, (ValueError,))
    assert gflow.Retry(count=4) == gflow.Retry(4)
    with pytest.raises(ValueError):
        gflow.Retry(-1)
    with pytest.raises(ValueError):
        gflow.Retry(1, nonsense=2)


def test_misspelt_keyword_is_named_with_a_suggestion():
    @gflow.task
    def mutate(parent: str, n: int = 1) -> str:
        return parent

    with pytest.raises(InvalidArguments, match=r"unexpected keyword argument 'parnt' \(did you mean 'parent'\?\)"):
        mutate.validator.bind((), {"parnt": "MKT"})


def test_cli_param_typo_and_repeated_json_key(gflow_home):
    env = {"GFLOW_HOME": str(gflow_home)}
    r = cli("run", f"{FLOWS}:protein_flow", "--param", "parnt=MKTAYIAK", "--no-progress", env=env)
    assert r.returncode != 0 and "'parnt' (did you mean 'parent'?)" in r.stderr, r.stderr
    assert "missing a required argument" not in r.stderr
    r = cli("run", f"{FLOWS}:merge", "--param", 'd={"a": 1, "a": 2}', "--param", "extra=[1]", "--no-progress", env=env)
    assert r.returncode != 0 and "--param d: the JSON object has the key 'a' twice" in r.stderr, r.stderr


def test_runs_ls_json_and_quiet(gflow_home):
    env = {"GFLOW_HOME": str(gflow_home)}
    ids = []
    for n in (2, 3):
        r = cli("run", f"{FLOWS}:map_reduce", "--param", f"n={n}", "--no-progress", env=env)
        assert r.returncode == 0, r.stderr
        ids.append(r.stderr.split("run ")[1].split()[0])
    q = cli("runs", "ls", "-q", env=env)
    assert q.returncode == 0 and q.stdout.split() == ids[::-1]
    js = cli("runs", "ls", "--output", "json", env=env)
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [row["id"] for row in rows] == ids[::-1]
    assert all(row["state"] == "SUCCEEDED" and row["flow"] == "map_reduce" for row in rows)
    assert rows[0]["counts"]["SUCCEEDED"] == rows[0]["tasks"] > 0
