"""Size limits on what gflow's objects hand to native parsers (RDKit, gemmi, gzip), read from the environment.

Each limit is an environment variable read when it is applied, so a test or a process can change it at
any time. The defaults are far above real inputs (drug-like molecules have under 100 heavy atoms, peptides
and macrocycles a few hundred; the largest PDB entries are a few hundred MB of mmCIF) and far below what
crashes or stalls the parsers (measured figures in docs/RELIABILITY.md). A limit applies wherever the
object is validated: a worker that must accept larger values needs the same variables set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gflow.errors import ConfigError, GflowError


class InputTooLarge(GflowError, ValueError):
    """An input is past one of the documented size limits; the message names the limit and its variable."""


@dataclass(frozen=True, slots=True)
class SmilesLimits:
    """Bounds on a SMILES before RDKit sees it (see the module docstring and docs/objects.md).

    Attributes:
        max_length: Characters (``GFLOW_SMILES_MAX_LENGTH``).
        max_atoms: Atoms written in the SMILES, bracket atoms and explicit hydrogens included
            (``GFLOW_SMILES_MAX_ATOMS``).
        max_branch_depth: Nesting of ``(`` branches (``GFLOW_SMILES_MAX_BRANCH_DEPTH``).
        max_ring_closures: Ring-closure bonds (``GFLOW_SMILES_MAX_RING_CLOSURES``).
        isolate_atoms: Molecules with more atoms are canonicalized in a helper process, so that a native
            crash or a stall in RDKit cannot take this process down (``GFLOW_SMILES_ISOLATE_ATOMS``).
        timeout: Seconds the helper process may take for one molecule (``GFLOW_SMILES_TIMEOUT``).
    """

    max_length: int = 20_000
    max_atoms: int = 1_000
    max_branch_depth: int = 200
    max_ring_closures: int = 300
    isolate_atoms: int = 200
    timeout: float = 30.0


_SMILES_VARS = {
    "max_length": "GFLOW_SMILES_MAX_LENGTH",
    "max_atoms": "GFLOW_SMILES_MAX_ATOMS",
    "max_branch_depth": "GFLOW_SMILES_MAX_BRANCH_DEPTH",
    "max_ring_closures": "GFLOW_SMILES_MAX_RING_CLOSURES",
    "isolate_atoms": "GFLOW_SMILES_ISOLATE_ATOMS",
    "timeout": "GFLOW_SMILES_TIMEOUT",
}
STRUCTURE_MAX_BYTES_VAR = "GFLOW_STRUCTURE_MAX_BYTES"
STRUCTURE_MAX_BYTES = 512 * 1024 * 1024


def _number(name: str, default: float, *, integer: bool, minimum: float) -> float:
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not value >= minimum or value == float("inf"):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} of at least {minimum:g}, not {raw[:40]!r}")
    return value


def smiles_limits() -> SmilesLimits:
    """The SMILES limits now in force: the defaults, overridden by the ``GFLOW_SMILES_*`` variables.

    Raises:
        ConfigError: If a variable is set to something that is not a positive number.
    """
    defaults = SmilesLimits()
    values = {field: _number(var, getattr(defaults, field), integer=field != "timeout",
                             minimum={"isolate_atoms": 0, "timeout": 0.01}.get(field, 1))
              for field, var in _SMILES_VARS.items()}
    return SmilesLimits(**values)  # type: ignore[arg-type]


def limit_var(field: str) -> str:
    """The environment variable of a :class:`SmilesLimits` field."""
    return _SMILES_VARS[field]


def structure_max_bytes() -> int:
    """The most bytes a structure file may hold once decompressed (``GFLOW_STRUCTURE_MAX_BYTES``, 512 MiB)."""
    return int(_number(STRUCTURE_MAX_BYTES_VAR, STRUCTURE_MAX_BYTES, integer=True, minimum=1))


def quote(text: str, keep: int = 40) -> str:
    """``text`` for an error message: whole when short, else a prefix and the length (never 100 KB of input)."""
    if len(text) <= keep + 20:
        return repr(text)
    return f"{text[:keep]!r}... ({len(text):,} characters)"
