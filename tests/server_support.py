"""Shared by the server and dashboard tests: where the test flows live and how drivers are started."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "tests" / "resources"


def driver_env() -> dict[str, str]:
    """Driver processes import the test flows (server_flows) by their recorded path."""
    return {"PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT), os.environ.get("PYTHONPATH", "")])}
