"""mypy over all of gflow (the configuration in pyproject.toml; STYLE: type everything; decorators keep
signatures)."""

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_mypy_clean():
    if shutil.which("mypy") is None and subprocess.run([sys.executable, "-m", "mypy", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mypy is not installed (it is in the test extra)")
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:]


def test_task_keeps_signature_for_type_checkers(tmp_path):
    if subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode != 0:
        pytest.skip("mypy is not installed")
    src = tmp_path / "typed_use.py"
    src.write_text(
        "import gflow\n\n@gflow.task\ndef f(x: int, y: str = 'a') -> float:\n    return 1.0\n\n"
        "reveal_type(f)\nf(1, y='b')\nf('wrong')\n")
    r = subprocess.run([sys.executable, "-m", "mypy", str(src), "--follow-imports=silent"], cwd=ROOT,
                       capture_output=True, text=True)
    assert "Task[[x: int, y: str =], float]" in r.stdout, r.stdout
    assert 'Argument 1 to "__call__" of "Task" has incompatible type "str"; expected "int"' in r.stdout, r.stdout
