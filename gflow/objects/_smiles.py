"""A SMILES syntax check for when RDKit is not installed: what RDKit's parser accepts, it accepts.

It covers the OpenSMILES grammar plus RDKit's extensions (``%(NNN)`` ring labels, dative bonds
``->``/``<-``, ring closures after a branch). It does not check valences or aromaticity; RDKit does.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ._limits import quote

_ORGANIC = ("Cl", "Br", "B", "C", "N", "O", "P", "S", "F", "I", "b", "c", "n", "o", "p", "s", "*")
_BONDS = frozenset("-=#$:/\\~")  # RDKit reads ~ (any bond) too
_BRACKET_ATOM_RE = re.compile(
    r"[0-9]*(?:[A-Z][a-z]{0,2}|[a-z][a-z]?|\*|#(?:11[0-8]|10[0-9]|[1-9]?[0-9]))"  # isotope; element (RDKit reads
    # Uuo, Uup), aromatic symbol, * or an atomic number up to 118 (RDKit fails an assertion past it)
    r"(?:@(?:@|TH[12]|AL[12]|SP[1-3]|TB[0-9]{1,2}|OH[0-9]{1,2})?)?"  # chirality
    r"(?:H[0-9]*)?"  # hydrogens
    r"(?:[+-][0-9]*|\+\+|--)?"  # charge
    r"(?::[0-9]+)?",  # atom class
    re.ASCII,
)
_RING_PERCENT_RE = re.compile(r"%(?:[0-9]{2}|\([0-9]+\))", re.ASCII)


class SmilesStats(NamedTuple):
    """What a syntax check counted: what the limits on SMILES bound (see ``gflow.objects._limits``)."""

    atoms: int
    branch_depth: int
    ring_closures: int


def check_smiles_syntax(smiles: str) -> SmilesStats:  # noqa: C901 - one scanner, one branch per token
    """Checks SMILES syntax without RDKit: characters, atoms, bonds, branches and ring closures.

    Returns:
        The atoms, the deepest branch nesting and the ring closures it counted.

    Raises:
        ValueError: Naming the first problem and its 1-based position.
    """
    if not smiles.isascii():
        index = next(i for i, c in enumerate(smiles) if not c.isascii())
        raise ValueError(f"non-ASCII character {smiles[index]!r} at position {index + 1}")
    stack: list[int | None] = []  # the atom each open branch hangs from
    open_rings: dict[str, tuple[int, int | None]] = {}  # ring label -> (position, atom)
    bonds: set[tuple[int, int]] = set()
    atoms = depth = closures = 0
    current: int | None = None  # the atom the next atom, ring closure or branch attaches to
    previous = ""  # kind of the previous token: "", "atom", "bond", "(", ")", "ring", "."
    i = 0
    n = len(smiles)
    while i < n:
        char = smiles[i]
        where = f"at position {i + 1}"
        atom_end = -1
        if char == "[":
            end = smiles.find("]", i)
            if end < 0:
                raise ValueError(f"unclosed '[' {where}")
            if _BRACKET_ATOM_RE.fullmatch(smiles, i + 1, end) is None:
                raise ValueError(f"invalid bracket atom {quote(smiles[i : end + 1])} {where}")
            atom_end = end + 1
        else:
            organic = next((s for s in _ORGANIC if smiles.startswith(s, i)), None)
            if organic is not None:
                atom_end = i + len(organic)
        if atom_end >= 0:
            if current is not None:
                bonds.add((current, atoms))
            current, atoms, previous, i = atoms, atoms + 1, "atom", atom_end
            continue
        if char in "0123456789" or char == "%":
            if char == "%":
                match = _RING_PERCENT_RE.match(smiles, i)
                if match is None:
                    raise ValueError(f"'%' must be followed by two digits or '(digits)' {where}")
                label = match.group()
                key = label[1:].strip("()").lstrip("0") or "0"
            else:
                label = key = char
            if previous not in ("atom", "ring", "bond", ")") or current is None:
                raise ValueError(f"ring closure {quote(label)} {where} does not follow an atom")
            if key in open_rings:
                _, other = open_rings.pop(key)
                pair = (min(current, other or 0), max(current, other or 0))
                if other == current:
                    raise ValueError(f"ring closure {quote(label)} {where} closes on the atom that opened it")
                if pair in bonds:
                    raise ValueError(f"ring closure {quote(label)} {where} duplicates a bond between the same atoms")
                bonds.add(pair)
                closures += 1
            else:
                open_rings[key] = (i + 1, current)
            previous, i = "ring", i + len(label)
            continue
        if smiles.startswith(("->", "<-", "\\\\"), i):
            if previous in ("", ".", "bond"):
                raise ValueError(f"bond {smiles[i : i + 2]!r} {where} does not follow an atom")
            previous, i = "bond", i + 2
            continue
        if char in _BONDS:
            if previous in ("", ".", "bond"):
                raise ValueError(f"bond {char!r} {where} does not follow an atom")
            previous = "bond"
        elif char == "(":
            if previous in ("", ".", "(", "bond"):
                raise ValueError(f"branch '(' {where} does not follow an atom")
            stack.append(current)
            depth = max(depth, len(stack))
            previous = "("
        elif char == ")":
            if not stack:
                raise ValueError(f"unbalanced ')' {where}")
            if previous in ("(", "bond", "."):
                raise ValueError(f"empty or dangling branch ending {where}")
            current, previous = stack.pop(), ")"
        elif char == ".":
            if previous in ("", ".", "bond", "("):
                raise ValueError(f"'.' {where} does not follow an atom")
            current, previous = None, "."
        elif char == "]":
            raise ValueError(f"unbalanced ']' {where}")
        elif char.isspace():
            raise ValueError(f"whitespace {where}: a SMILES has none (give a name as the molecule's name; "
                             f"CXSMILES extensions are not read)")
        else:
            raise ValueError(f"unexpected character {char!r} {where}")
        i += 1
    if stack:
        raise ValueError(f"{len(stack)} unclosed '('")
    if open_rings:
        label, (position, _) = next(iter(open_rings.items()))
        raise ValueError(f"ring closure {quote(label)} opened at position {position} is never closed")
    if atoms == 0:
        raise ValueError("no atoms")
    if previous in ("bond", "."):
        raise ValueError("ends with a dangling bond or '.'")
    return SmilesStats(atoms, depth, closures)
