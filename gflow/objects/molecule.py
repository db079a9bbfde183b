"""Small molecules given as SMILES."""

from __future__ import annotations

import functools
import re
from types import ModuleType

from pydantic import Field, field_validator

from ._base import GflowObject, Metadata

_ORGANIC = ("Cl", "Br", "B", "C", "N", "O", "P", "S", "F", "I", "b", "c", "n", "o", "p", "s", "*")
_BONDS = frozenset("-=#$:/\\")
_BRACKET_ATOM_RE = re.compile(r"^\d*(?:[A-Z][a-z]?|[a-z][a-z]?|\*)[A-Za-z0-9@+\-:]*$")


@functools.lru_cache(maxsize=1)
def _rdkit_chem() -> ModuleType | None:
    """Imports ``rdkit.Chem`` on first use; None where RDKit is not installed."""
    try:
        from rdkit import Chem  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    module: ModuleType = Chem
    return module


def check_smiles_syntax(smiles: str) -> None:
    """Checks SMILES syntax without RDKit: characters, atoms, branches and ring closures.

    This catches typos and truncation; it does not check valences or aromaticity.

    Raises:
        ValueError: Naming the first problem and its 1-based position.
    """
    depth = 0
    open_rings: dict[str, int] = {}
    atoms = 0
    previous = ""  # kind of the previous token: "", "atom", "bond", "(", ")", "ring", "."
    i = 0
    while i < len(smiles):
        char = smiles[i]
        where = f"at position {i + 1}"
        if char == "[":
            end = smiles.find("]", i)
            if end < 0:
                raise ValueError(f"unclosed '[' {where}")
            if not _BRACKET_ATOM_RE.match(smiles[i + 1 : end]):
                raise ValueError(f"invalid bracket atom {smiles[i : end + 1]!r} {where}")
            atoms, previous, i = atoms + 1, "atom", end + 1
            continue
        organic = next((s for s in _ORGANIC if smiles.startswith(s, i)), None)
        if organic is not None:
            atoms, previous, i = atoms + 1, "atom", i + len(organic)
            continue
        if char.isdigit() or char == "%":
            label = smiles[i : i + 3] if char == "%" else char
            if char == "%" and not (len(label) == 3 and label[1:].isdigit()):
                raise ValueError(f"'%' must be followed by two digits {where}")
            if previous not in ("atom", "ring", "bond"):
                raise ValueError(f"ring closure {label!r} {where} does not follow an atom")
            if label in open_rings:
                del open_rings[label]
            else:
                open_rings[label] = i + 1
            previous, i = "ring", i + len(label)
            continue
        if char in _BONDS:
            if previous in ("", ".", "bond"):
                raise ValueError(f"bond {char!r} {where} does not follow an atom")
            previous = "bond"
        elif char == "(":
            if previous in ("", ".", "(", "bond"):
                raise ValueError(f"branch '(' {where} does not follow an atom")
            depth, previous = depth + 1, "("
        elif char == ")":
            if depth == 0:
                raise ValueError(f"unbalanced ')' {where}")
            if previous in ("(", "bond"):
                raise ValueError(f"empty or dangling branch ending {where}")
            depth, previous = depth - 1, ")"
        elif char == ".":
            if previous in ("", ".", "bond", "("):
                raise ValueError(f"'.' {where} does not follow an atom")
            previous = "."
        elif char == "]":
            raise ValueError(f"unbalanced ']' {where}")
        else:
            raise ValueError(f"unexpected character {char!r} {where}")
        i += 1
    if depth:
        raise ValueError(f"{depth} unclosed '('")
    if open_rings:
        label, position = next(iter(open_rings.items()))
        raise ValueError(f"ring closure {label!r} opened at position {position} is never closed")
    if atoms == 0:
        raise ValueError("no atoms")
    if previous in ("bond", "."):
        raise ValueError("ends with a dangling bond or '.'")


class Molecule(GflowObject):
    """A small molecule given as a SMILES string.

    The SMILES is syntax-checked always, and parsed by RDKit where RDKit is installed.

    Attributes:
        smiles: The SMILES string, surrounding whitespace removed.
        name: Optional identifier.
        metadata: JSON-safe annotations.
    """

    smiles: str
    name: str | None = None
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("smiles")
    @classmethod
    def _check_smiles(cls, value: str) -> str:
        smiles = value.strip()
        if not smiles:
            raise ValueError("SMILES is empty")
        try:
            check_smiles_syntax(smiles)
        except ValueError as exc:
            raise ValueError(f"invalid SMILES {smiles!r}: {exc}") from None
        chem = _rdkit_chem()
        if chem is not None and chem.MolFromSmiles(smiles) is None:
            raise ValueError(f"invalid SMILES {smiles!r}: RDKit could not parse it")
        return smiles
