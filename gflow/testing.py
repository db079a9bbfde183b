"""Helpers for testing flows: an isolated gflow home and a one-call flow runner.

In your conftest.py::

    from gflow.testing import gflow_home  # noqa: F401  (a pytest fixture)

    def test_design(gflow_home):
        result = run_flow(design, parent, executor="inline")
        assert result.state is gflow.State.SUCCEEDED
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gflow.flows import Flow, RunResult

_ENV = ("GFLOW_HOME", "GFLOW_PROFILE", "GFLOW_CONFIG", "GFLOW_EXECUTOR", "GFLOW_STORE", "GFLOW_ARTIFACTS",
        "GFLOW_EVENTS", "GFLOW_IMAGE_REGISTRY")


@contextmanager
def isolated_home(path: str | os.PathLike | None = None) -> Iterator[Path]:
    """Point gflow at a fresh home (state + artifacts) and ignore GFLOW_* settings while inside."""
    saved = {k: os.environ.pop(k) for k in _ENV if k in os.environ}
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="gflow-home-")
        path = tmp.name
    os.environ["GFLOW_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        os.environ.pop("GFLOW_HOME", None)
        os.environ.update(saved)
        if tmp is not None:
            tmp.cleanup()


def run_flow(flow: Flow, *args: Any, executor: Any = "inline", **kwargs: Any) -> RunResult:
    """Run ``flow`` and return its :class:`RunResult` (never raises for a failed run)."""
    return flow.run(*args, executor=executor, return_run=True, **kwargs)


try:
    import pytest

    @pytest.fixture
    def gflow_home(tmp_path: Path) -> Iterator[Path]:
        """A pytest fixture: an isolated gflow home under the test's tmp_path."""
        with isolated_home(tmp_path / "gflow-home") as home:
            yield home

except ImportError:  # pytest is optional
    pass
