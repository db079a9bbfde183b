"""Flows for the server and dashboard tests, importable by the driver processes the server starts
(``gflow resume`` imports a run's flow by its recorded path, ``server_flows:<name>``).

``flaky`` fails for x == 2 until the file ``$GFLOW_HOME/fixed`` exists: a test runs the flow (it
fails), "fixes" it, and retries the failed task from the dashboard.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import gflow
from gflow.objects import Molecule, Protein, Score

GATE = threading.Event()


def _fixed() -> bool:
    return (Path(os.environ.get("GFLOW_HOME", ".")) / "fixed").exists()


@gflow.task
def square(x: int) -> int:
    return x * x


@gflow.task
def flaky(x: int) -> int:
    if x == 2 and not _fixed():
        raise ValueError(f"flaky {x}: not fixed yet")
    return x * 10


@gflow.task
def held(x: int) -> int:
    GATE.wait(60)
    return x


@gflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


@gflow.task
def design(p: Protein) -> list:
    return [Protein(sequence=p.sequence + "W", name="variant"), Molecule(smiles="c1ccccc1O"),
            Score(value=0.87, name="plddt")]


@gflow.flow
def squares(n: int = 4) -> int:
    return total(square.map(range(n)))


@gflow.flow
def flaky_sum(n: int = 4) -> int:
    return total(flaky.map(range(n)))


@gflow.flow
def held_flow(n: int = 3) -> int:
    return total(held.map(range(n)))


@gflow.flow
def designs(p: Protein, top: int = 3) -> list:
    return design(p)
