"""Small molecules given as SMILES; identity is RDKit's canonical SMILES.

Identity and serialization: ``Molecule.smiles`` holds the canonical SMILES, and that is what
``model_dump`` (so the canonical JSON, ``content_id`` and every task cache key) carries; the
spelling the caller gave is kept beside it, as ``given_smiles``, outside the serialized data. So
``Molecule(smiles="OCC") == Molecule(smiles="CCO")`` and both give the same cache key; a molecule
read back from the store (or received by a remote task) has its canonical form as its spelling.
Without RDKit (the ``chem`` extra) the SMILES is only syntax-checked, kept as given (stripped), and
a warning says so once per process: equal molecules spelled differently are then different objects.

Limits (docs/objects.md): a SMILES is refused before RDKit sees it past 20,000 characters, 1,000 atoms,
200 nested branches or 300 ring closures (``GFLOW_SMILES_MAX_LENGTH``, ``_MAX_ATOMS``,
``_MAX_BRANCH_DEPTH``, ``_MAX_RING_CLOSURES``); one of more than 200 atoms (``GFLOW_SMILES_ISOLATE_ATOMS``)
is canonicalized in a helper process with a 30 s timeout (``GFLOW_SMILES_TIMEOUT``), so that no SMILES,
given or read from a store, can crash or stall the process that validates it. Errors quote at most the
first 40 characters of a long SMILES and its length.
"""

from __future__ import annotations

from functools import cached_property
from types import ModuleType
from typing import Any, Self

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ._base import FiniteFloat, GflowObject, Metadata, shorten
from ._base import number as _number
from ._deps import optional, require, warn_once
from ._limits import InputTooLarge, limit_var, quote, smiles_limits
from ._rdkit_canon import canonical, isolated_canonical
from ._smiles import SmilesStats, check_smiles_syntax

__all__ = ["Descriptors", "Molecule", "canonical_smiles", "check_smiles_syntax"]

def _rdkit_chem() -> ModuleType | None:
    """``rdkit.Chem``, or None where RDKit is not installed (tests replace this to simulate that)."""
    return optional("rdkit.Chem")


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES of ``smiles``, iterated to a fixed point so it is stable under re-reading.

    The SMILES is checked against the limits first (see :class:`Molecule`), and a large one is
    canonicalized in a helper process.

    Raises:
        MissingExtra: Without RDKit.
        ValueError: If the SMILES is past a limit, or RDKit cannot parse or sanitize it, saying why.
    """
    chem = require("rdkit.Chem", "chem", "canonical SMILES")
    return _canonical(chem, smiles.strip(), _checked(smiles.strip()))


def _checked(smiles: str) -> SmilesStats:
    """Syntax and size checks, before anything reaches RDKit (``InputTooLarge`` past a limit)."""
    limits = smiles_limits()
    if len(smiles) > limits.max_length:
        raise InputTooLarge(f"{len(smiles):,} characters; at most {limits.max_length:,} "
                            f"({limit_var('max_length')})")
    stats = check_smiles_syntax(smiles)
    for field, value, what in (("max_atoms", stats.atoms, "atoms"),
                               ("max_branch_depth", stats.branch_depth, "nested branches"),
                               ("max_ring_closures", stats.ring_closures, "ring closures")):
        if value > getattr(limits, field):
            raise InputTooLarge(f"{value:,} {what}; at most {getattr(limits, field):,} ({limit_var(field)})")
    return stats


def _canonical(chem: ModuleType, smiles: str, stats: SmilesStats) -> str:
    limits = smiles_limits()
    if stats.atoms > limits.isolate_atoms:
        return isolated_canonical(smiles, limits.timeout)
    return canonical(chem, smiles)


class Descriptors(GflowObject):
    """Physicochemical descriptors of a molecule, computed by RDKit.

    Attributes:
        molecular_weight: Average molecular weight (g/mol), ``Descriptors.MolWt``.
        logp: Wildman-Crippen logP.
        hbd: Lipinski hydrogen-bond donors.
        hba: Lipinski hydrogen-bond acceptors.
        tpsa: Topological polar surface area (Ertl), in square angstroms.
        qed: Quantitative estimate of drug-likeness (0..1).
        rotatable_bonds: Rotatable bonds.
        heavy_atoms: Heavy (non-hydrogen) atoms.
        rings: Ring count.
        aromatic_rings: Aromatic ring count.
        formal_charge: Net formal charge.
    """

    molecular_weight: FiniteFloat
    logp: FiniteFloat
    hbd: int
    hba: int
    tpsa: FiniteFloat
    qed: FiniteFloat
    rotatable_bonds: int
    heavy_atoms: int
    rings: int
    aromatic_rings: int
    formal_charge: int

    def summary(self) -> str:
        return (f"MW {_number(self.molecular_weight)}, logP {_number(self.logp)}, HBD {self.hbd}, HBA {self.hba}, "
                f"TPSA {_number(self.tpsa)}, QED {_number(self.qed)}")

    def lipinski_violations(self) -> int:
        """How many of Lipinski's rule-of-five limits are exceeded (MW 500, logP 5, HBD 5, HBA 10)."""
        return sum((self.molecular_weight > 500, self.logp > 5, self.hbd > 5, self.hba > 10))


class Molecule(GflowObject):
    """A small molecule, identified by its canonical SMILES.

    ``Molecule.model_validate("CCO")`` accepts a bare SMILES string.

    Attributes:
        smiles: RDKit's canonical SMILES (the given spelling, stripped, where RDKit is not installed).
        name: Optional identifier.
        metadata: JSON-safe annotations.
    """

    smiles: str
    name: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    _given: str | None = PrivateAttr(default=None)

    def registry_key(self) -> str | None:
        return self.smiles

    def summary(self) -> str:
        """``Molecule aspirin: CC(=O)Oc1ccccc1C(=O)O`` (a long SMILES shortened)."""
        who = f"Molecule {self.name}:" if self.name else "Molecule"
        return f"{who} {shorten(self.smiles, 60)}"

    @model_validator(mode="wrap")
    @classmethod
    def _keep_given(cls, data: Any, handler: Any) -> Any:
        if isinstance(data, str):
            data = {"smiles": data}
        given = data.get("smiles") if isinstance(data, dict) else None
        obj = handler(data)
        if isinstance(given, str) and isinstance(obj, Molecule) and obj is not data:
            obj._given = given.strip()
        return obj

    @field_validator("smiles")
    @classmethod
    def _check_smiles(cls, value: str) -> str:
        smiles = value.strip()
        if not smiles:
            raise ValueError("SMILES is empty")
        try:
            stats = _checked(smiles)
            chem = _rdkit_chem()
            if chem is None:
                warn_once("molecule-syntax-only", "RDKit is not installed: Molecule SMILES are only syntax-checked "
                          "and not canonicalized (pip install 'gflow[chem]')")
                return smiles
            return _canonical(chem, smiles, stats)
        except InputTooLarge as exc:
            raise ValueError(f"SMILES {quote(smiles)} is too large: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"invalid SMILES {quote(smiles)}: {exc}") from None

    @property
    def given_smiles(self) -> str:
        """The SMILES as the caller spelled it (stripped); the canonical form after a trip through storage."""
        return self._given if self._given is not None else self.smiles

    @property
    def canonical_smiles(self) -> str:
        """The canonical SMILES (the identity); the same as ``smiles``."""
        return self.smiles

    @cached_property
    def mol(self) -> Any:
        """The RDKit molecule (parsed once per object).

        Raises:
            MissingExtra: Without RDKit.
        """
        chem = require("rdkit.Chem", "chem", "Molecule.mol")
        return chem.MolFromSmiles(self.smiles)

    @cached_property
    def _descriptors(self) -> Descriptors:
        require("rdkit.Chem", "chem", "Molecule descriptors")
        from rdkit.Chem import QED, rdMolDescriptors  # type: ignore[import-not-found, unused-ignore]
        from rdkit.Chem import Descriptors as RDDescriptors  # type: ignore[import-not-found, unused-ignore]

        mol = self.mol
        return Descriptors(
            molecular_weight=RDDescriptors.MolWt(mol),  # type: ignore[attr-defined, unused-ignore]
            logp=rdMolDescriptors.CalcCrippenDescriptors(mol)[0],  # what Crippen.MolLogP returns
            hbd=rdMolDescriptors.CalcNumHBD(mol),  # what Lipinski.NumHDonors returns
            hba=rdMolDescriptors.CalcNumHBA(mol),
            tpsa=rdMolDescriptors.CalcTPSA(mol),
            qed=QED.qed(mol),
            rotatable_bonds=rdMolDescriptors.CalcNumRotatableBonds(mol),
            heavy_atoms=mol.GetNumHeavyAtoms(),
            rings=rdMolDescriptors.CalcNumRings(mol),
            aromatic_rings=rdMolDescriptors.CalcNumAromaticRings(mol),
            formal_charge=sum(atom.GetFormalCharge() for atom in mol.GetAtoms()),
        )

    def descriptors(self) -> Descriptors:
        """Weight, logP, HBD/HBA, TPSA, QED and counts, computed on first use and kept on the object.

        Raises:
            MissingExtra: Without RDKit.
        """
        return self._descriptors

    @property
    def molecular_weight(self) -> float:
        """Average molecular weight in g/mol (RDKit)."""
        return self._descriptors.molecular_weight

    @property
    def logp(self) -> float:
        """Wildman-Crippen logP (RDKit)."""
        return self._descriptors.logp

    @property
    def tpsa(self) -> float:
        """Topological polar surface area (RDKit)."""
        return self._descriptors.tpsa

    @property
    def qed(self) -> float:
        """Quantitative estimate of drug-likeness (RDKit)."""
        return self._descriptors.qed

    @property
    def hbd(self) -> int:
        """Hydrogen-bond donors (RDKit, Lipinski)."""
        return self._descriptors.hbd

    @property
    def hba(self) -> int:
        """Hydrogen-bond acceptors (RDKit, Lipinski)."""
        return self._descriptors.hba

    @classmethod
    def from_smiles_file(cls, text: str) -> list[Self]:
        """Reads a ``.smi`` text: one SMILES per line, optionally followed by whitespace and a name.

        Raises:
            ValueError: Naming the line of the first invalid SMILES.
        """
        out: list[Self] = []
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split(None, 1)
            if not fields or fields[0].startswith("#"):
                continue
            try:
                out.append(cls(smiles=fields[0], name=fields[1].strip() if len(fields) > 1 else None))
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise ValueError(f"SMILES line {number}: {_first_message(exc)}") from exc
        return out


def _first_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors())
    return str(exc)

