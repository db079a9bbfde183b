"""Issue 16 items 1 and 4: what reaches RDKit and gzip is bounded; no SMILES can crash the driver.

The crashes reproduced here killed the process with SIGSEGV before the fix, so each runs in a
subprocess (a Python one, or the ``gflow`` CLI) and asserts it ends with a typed error, not a signal.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import ROOT, cli
from pydantic import ValidationError

import gflow
from gflow.objects import Molecule
from gflow.store import open_store

pytest.importorskip("rdkit.Chem")
import gflow.objects._rdkit_canon as rdkit_canon  # noqa: E402
import gflow.objects.molecule as molecule_module  # noqa: E402

# each of these killed the process (SIGSEGV) or ran for minutes inside RDKit before the fix
HOSTILE = ('{"chain": "C" * 20_000, "iron": "[Fe]" * 25_000, "nested": "C(C" * 25_000 + ")" * 25_000, '
           '"rings": "C1CC1" * 20_000, "aromatic": "c" * 100_000}')


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_hostile_smiles_are_refused_before_rdkit_in_a_process_that_survives():
    code = textwrap.dedent(f"""
        from pydantic import ValidationError
        from gflow.objects import Molecule
        for name, smiles in {HOSTILE}.items():
            try:
                Molecule(smiles=smiles)
                print(name, "ACCEPTED")
            except ValidationError as exc:
                print(name, exc.errors()[0]["msg"])
    """)
    done = _python(code)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # before: -11 (SIGSEGV)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"chain", "iron", "nested", "rings", "aromatic"}
    for name, message in lines.items():
        assert "is too large" in message and "GFLOW_SMILES_MAX_" in message, (name, message)
        assert len(message) < 300, message  # a prefix and the length, never the whole SMILES
    assert "20,000 atoms; at most 1,000 (GFLOW_SMILES_MAX_ATOMS)" in lines["chain"]
    assert "100,000 characters; at most 20,000 (GFLOW_SMILES_MAX_LENGTH)" in lines["aromatic"]


def test_limits_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("GFLOW_SMILES_MAX_ATOMS", "10")
    assert Molecule(smiles="C" * 10).smiles == "C" * 10
    with pytest.raises(ValidationError, match=r"11 atoms; at most 10 \(GFLOW_SMILES_MAX_ATOMS\)"):
        Molecule(smiles="C" * 11)
    monkeypatch.setenv("GFLOW_SMILES_MAX_BRANCH_DEPTH", "2")
    Molecule(smiles="CC(C(C))C")
    with pytest.raises(ValidationError, match="3 nested branches; at most 2"):
        Molecule(smiles="CC(C(C(C)))C")
    monkeypatch.setenv("GFLOW_SMILES_MAX_RING_CLOSURES", "1")
    Molecule(smiles="c1ccccc1")
    with pytest.raises(ValidationError, match="2 ring closures; at most 1"):
        Molecule(smiles="C1CC1C1CC1")
    monkeypatch.setenv("GFLOW_SMILES_MAX_LENGTH", "5")
    with pytest.raises(ValidationError, match="6 characters; at most 5"):
        Molecule(smiles="CCCCCC")
    monkeypatch.setenv("GFLOW_SMILES_MAX_ATOMS", "many")
    with pytest.raises(gflow.ConfigError, match="GFLOW_SMILES_MAX_ATOMS must be an integer of at least 1, not 'many'"):
        Molecule(smiles="CCO")


def test_a_large_molecule_is_canonicalized_in_a_helper_process(monkeypatch):
    monkeypatch.setenv("GFLOW_SMILES_ISOLATE_ATOMS", "0")
    assert Molecule(smiles="OCC").smiles == "CCO"  # the same canonical form as in this process
    helper = rdkit_canon._HELPER.proc
    assert helper is not None and helper.poll() is None and helper.pid != os.getpid()
    with pytest.raises(ValidationError, match=r"invalid SMILES 'C\(C\).*RDKit: Explicit valence"):  # RDKit says why
        Molecule(smiles="C(C)(C)(C)(C)C")
    assert Molecule(smiles="c1ccccc1O").smiles == "Oc1ccccc1"
    assert rdkit_canon._HELPER.proc is helper  # reused


def test_a_forked_child_starts_its_own_helper_even_while_the_parent_holds_the_lock(monkeypatch):
    monkeypatch.setenv("GFLOW_SMILES_ISOLATE_ATOMS", "0")
    Molecule(smiles="CCO")
    parent_helper = rdkit_canon._HELPER.proc
    assert parent_helper is not None
    ctx = multiprocessing.get_context("fork")
    with rdkit_canon._HELPER.lock, ctx.Pool(1) as pool:  # a thread of the parent is asking its helper
        smiles, child_helper = pool.apply_async(_child_canonical, ("OCC",)).get(timeout=30)
    assert smiles == "CCO" and child_helper not in (None, parent_helper.pid)
    assert rdkit_canon._HELPER.proc is parent_helper and parent_helper.poll() is None


def _child_canonical(smiles: str) -> tuple[str, int | None]:
    value = Molecule(smiles=smiles).smiles
    proc = rdkit_canon._HELPER.proc
    return value, None if proc is None else proc.pid


def test_a_helper_that_cannot_start_or_answers_garbage_is_a_typed_error(monkeypatch):
    monkeypatch.setenv("GFLOW_SMILES_ISOLATE_ATOMS", "0")
    rdkit_canon._HELPER._stop()
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(ValidationError, match="helper process for RDKit could not start"):
        Molecule(smiles="OCC")
    monkeypatch.undo()
    monkeypatch.setenv("GFLOW_SMILES_ISOLATE_ATOMS", "0")
    liar = "import sys; sys.stdin.readline(); print('not json', flush=True); sys.stdin.read()"
    rdkit_canon._HELPER.proc = subprocess.Popen([sys.executable, "-c", liar], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE)
    with pytest.raises(ValidationError, match="helper process for RDKit answered b'not json'"):
        Molecule(smiles="OCC")
    assert Molecule(smiles="OCC").smiles == "CCO"  # a new, real helper


@pytest.fixture
def big_chains(monkeypatch):
    """Limits raised so that a long chain (about a second in RDKit) reaches the helper."""
    monkeypatch.setenv("GFLOW_SMILES_MAX_ATOMS", "20000")
    Molecule(smiles="C" * 300)  # the helper is running
    return "C" * 8_000


def test_a_crash_in_rdkit_is_a_typed_error_and_the_next_molecule_gets_a_new_helper(big_chains):
    helper = rdkit_canon._HELPER.proc
    assert helper is not None
    errors: list[BaseException] = []

    def validate() -> None:
        try:
            Molecule(smiles=big_chains)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    worker = threading.Thread(target=validate)
    worker.start()
    while not rdkit_canon._HELPER.lock.locked() and worker.is_alive():
        worker.join(0.01)
    os.kill(helper.pid, signal.SIGSEGV)  # what RDKit's stack overflow does to a process
    worker.join(60)
    assert len(errors) == 1 and isinstance(errors[0], ValidationError)
    assert "RDKit crashed on it (killed by SIGSEGV, in gflow's helper process)" in str(errors[0])
    assert Molecule(smiles="C" * 300).smiles == "C" * 300
    assert rdkit_canon._HELPER.proc is not helper


def test_rdkit_past_the_timeout_is_a_typed_error(big_chains, monkeypatch):
    monkeypatch.setenv("GFLOW_SMILES_TIMEOUT", "0.2")
    helper = rdkit_canon._HELPER.proc
    with pytest.raises(ValidationError, match=r"RDKit took longer than 0.2 s on it \(GFLOW_SMILES_TIMEOUT\)"):
        Molecule(smiles=big_chains)
    assert helper is not None and helper.poll() is not None  # killed
    assert Molecule(smiles="C" * 300).smiles == "C" * 300  # a new helper (starting it is not counted)


def test_without_rdkit_errors_quote_a_prefix_and_the_length(monkeypatch):
    monkeypatch.setattr(molecule_module, "_rdkit_chem", lambda: None)
    with pytest.warns(UserWarning):
        Molecule(smiles="CCO")
    for smiles, expected in (("C" * 15_000 + "(", "1 unclosed '('"), ("C" * 100_000, "100,000 characters; at most"),
                             ("[Fe" + "C" * 5_000 + "]", "invalid bracket atom '[FeCCC")):
        with pytest.raises(ValidationError) as info:
            Molecule(smiles=smiles)
        message = str(info.value)
        assert expected in message and "characters)" in message
        assert "C" * 100 not in message and len(message) < 600, message[:600]


# -- the driver: a --param and a tampered stored value ------------------------------------------------------
FLOW = """
import os
import gflow
from gflow.objects import Molecule

@gflow.task(cache=True)
def make(smiles: str) -> Molecule:
    return Molecule(smiles=smiles)

@gflow.task
def gate(m: Molecule) -> str:
    if os.environ.get("GATE_CLOSED"):
        raise RuntimeError("gate closed")
    return m.smiles

@gflow.flow
def mol_flow(smiles: str = "OCC") -> str:
    return gate(make(smiles)).result()

@gflow.flow
def takes(m: Molecule) -> str:
    return m.smiles
"""


def _tamper(db_path, smiles: str) -> int:
    hostile = json.dumps({"__gflow__": "model", "type": "gflow.objects.molecule:Molecule",
                          "data": {"smiles": smiles, "name": None, "metadata": {}}})
    db = sqlite3.connect(db_path)
    n = db.execute("UPDATE task_runs SET result_inline = ? WHERE result_inline LIKE '%Molecule%'", (hostile,)).rowcount
    db.commit()
    db.close()
    return n


def test_a_long_smiles_param_is_one_clear_error_and_no_crash(gflow_home, tmp_path):
    (tmp_path / "molflows.py").write_text(FLOW)
    env = {"GFLOW_HOME": str(gflow_home)}
    done = cli("run", f"{tmp_path / 'molflows.py'}:takes", "--param", "m=" + "C" * 20_000, "--no-progress",
               env=env, cwd=tmp_path)
    assert done.returncode > 0, (done.returncode, done.stderr[-2000:])  # before: -11, no run recorded
    assert "GFLOW_SMILES_MAX_ATOMS" in done.stderr and "C" * 100 not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["resume", "rerun"])
def test_a_tampered_stored_molecule_gives_a_typed_error_not_a_crash(gflow_home, tmp_path, how):
    (tmp_path / "molflows.py").write_text(FLOW)
    env = {"GFLOW_HOME": str(gflow_home)}
    target = f"{tmp_path / 'molflows.py'}:mol_flow"
    first = cli("run", target, "--no-progress", env={**env, "GATE_CLOSED": "1"} if how == "resume" else env,
                cwd=tmp_path)
    assert (first.returncode != 0) == (how == "resume"), first.stderr[-2000:]
    store = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    (old,) = store.list_runs()
    assert _tamper(gflow_home / "gflow.db", "C" * 20_000) == 1
    again = cli("resume", old.id, "--no-progress", env=env, cwd=tmp_path) if how == "resume" else \
        cli("run", target, "--no-progress", env=env, cwd=tmp_path)
    assert again.returncode == 0, (again.returncode, again.stderr[-2000:])  # before: -11 (SIGSEGV)
    assert json.loads(again.stdout) == "CCO"  # the unreadable stored result was computed again
    new = store.list_runs(limit=1)[0]
    assert new.id != old.id and new.state.name == "SUCCEEDED"
    store.close()

