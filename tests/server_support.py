"""Shared by the server and dashboard tests: where the test flows live and how drivers are started."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "tests" / "resources"


def cli_has_run_id() -> bool:
    """Whether `gflow resume` takes --run-id yet (the lead adds it; the server is written against it)."""
    from gflow.cli import resume

    return any("--run-id" in p.opts for p in resume.params)


def driver_env() -> dict[str, str]:
    """Driver processes import the test flows (server_flows) by their recorded path."""
    return {"PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT), os.environ.get("PYTHONPATH", "")])}


#: driver options for tests that need the new run to get the announced id: the real command once the CLI
#: has --run-id; until then a stand-in (tests/resources/run_id_driver.py) that runs the real CLI and names the run
RUN_ID_DRIVER: dict = {} if cli_has_run_id() else {
    "command": ("{python}", str(RESOURCES / "run_id_driver.py"), "{kind}", "{source}", "--run-id", "{new}")}
