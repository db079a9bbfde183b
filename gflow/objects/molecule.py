"""Small molecules given as SMILES; identity is RDKit's canonical SMILES.

Identity and serialization: ``Molecule.smiles`` holds the canonical SMILES, and that is what
``model_dump`` (so the canonical JSON, ``content_id`` and every task cache key) carries; the
spelling the caller gave is kept beside it, as ``given_smiles``, outside the serialized data. So
``Molecule(smiles="OCC") == Molecule(smiles="CCO")`` and both give the same cache key; a molecule
read back from the store (or received by a remote task) has its canonical form as its spelling.
Without RDKit (the ``chem`` extra) the SMILES is only syntax-checked, kept as given (stripped), and
a warning says so once per process: equal molecules spelled differently are then different objects.
"""

from __future__ import annotations

from functools import cached_property
from types import ModuleType
from typing import Any, Self

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ._base import FiniteFloat, GflowObject, Metadata
from ._deps import optional, require, warn_once
from ._smiles import check_smiles_syntax

__all__ = ["Descriptors", "Molecule", "canonical_smiles", "check_smiles_syntax"]

_CANONICAL_PASSES = 4


def _rdkit_chem() -> ModuleType | None:
    """``rdkit.Chem``, or None where RDKit is not installed (tests replace this to simulate that)."""
    return optional("rdkit.Chem")


def _rdkit_error(chem: ModuleType, smiles: str) -> str:
    """Why RDKit refuses ``smiles``: its syntax error, or the sanitization (valence, aromaticity) problem."""
    from rdkit import rdBase  # type: ignore[import-not-found, unused-ignore]

    with rdBase.BlockLogs():
        raw = chem.MolFromSmiles(smiles, sanitize=False)
        if raw is None:
            return "RDKit could not parse it"
        try:
            chem.SanitizeMol(raw)
        except Exception as exc:  # noqa: BLE001 - RDKit raises its own exception types
            return f"RDKit: {str(exc).strip() or type(exc).__name__}"
    return "RDKit could not parse it"


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES of ``smiles``, iterated to a fixed point so it is stable under re-reading.

    Raises:
        MissingExtra: Without RDKit.
        ValueError: If RDKit cannot parse or sanitize the SMILES, saying why.
    """
    chem = require("rdkit.Chem", "chem", "canonical SMILES")
    return _canonical(chem, smiles)


def _canonical(chem: ModuleType, smiles: str) -> str:
    from rdkit import rdBase  # type: ignore[import-not-found, unused-ignore]

    with rdBase.BlockLogs():
        mol = chem.MolFromSmiles(smiles)
        if mol is None:
            raise ValueError(_rdkit_error(chem, smiles))
        current = chem.MolToSmiles(mol)
        for _ in range(_CANONICAL_PASSES):  # RDKit's output is canonical, but rarely not a fixed point
            again = chem.MolFromSmiles(current)
            if again is None:
                break
            following = chem.MolToSmiles(again)
            if following == current:
                break
            current = following
    return str(current)


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
            check_smiles_syntax(smiles)
        except ValueError as exc:
            raise ValueError(f"invalid SMILES {smiles!r}: {exc}") from None
        chem = _rdkit_chem()
        if chem is None:
            warn_once("molecule-syntax-only", "RDKit is not installed: Molecule SMILES are only syntax-checked "
                      "and not canonicalized (pip install 'gflow[chem]')")
            return smiles
        try:
            return _canonical(chem, smiles)
        except ValueError as exc:
            raise ValueError(f"invalid SMILES {smiles!r}: {exc}") from None

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

