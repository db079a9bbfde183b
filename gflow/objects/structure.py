"""3D structures as PDB or mmCIF text, with minimal parsing for atoms, chains and sequence."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import ValidationInfo, field_validator, model_validator

from ._base import GflowObject

StructureFormat = Literal["pdb", "mmcif"]

THREE_TO_ONE: dict[str, str] = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E",
    "GLY": "G", "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F",
    "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
    "SEC": "U", "PYL": "O", "MSE": "M", "ASX": "B", "GLX": "Z", "UNK": "X",
}  # fmt: skip
_SUFFIX_FORMATS: dict[str, StructureFormat] = {".pdb": "pdb", ".ent": "pdb", ".cif": "mmcif", ".mmcif": "mmcif"}
_CIF_TOKEN_RE = re.compile(r"'[^']*'(?=\s|$)|\"[^\"]*\"(?=\s|$)|\S+")
_MISSING = ("?", ".")


class _Atom(NamedTuple):
    record: str  # "ATOM" or "HETATM"
    name: str
    resname: str
    chain: str
    residue: str  # residue number plus insertion code, e.g. "52A"


def _first_content_line(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return ""


def _sniff_format(text: str) -> StructureFormat:
    return "mmcif" if _first_content_line(text).startswith("data_") else "pdb"


def _is_pdb_atom_line(line: str) -> bool:
    if not line.startswith(("ATOM", "HETATM")):
        return False
    try:
        float(line[30:38]), float(line[38:46]), float(line[46:54])
    except ValueError:
        return False
    return True


def _pdb_atoms(text: str) -> list[_Atom]:
    atoms = []
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break  # first model only
        if _is_pdb_atom_line(line):
            record = line[:6].strip()
            atoms.append(_Atom(record, line[12:16].strip(), line[17:20].strip(), line[21].strip(), line[22:27].strip()))
    return atoms


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] in "'\"" and token[-1] == token[0]:
        return token[1:-1]
    return token


def _cif_atom_site(text: str) -> tuple[list[str], list[str]]:
    """Returns the ``_atom_site`` loop's column names and its values as one flat token list."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.strip() != "loop_" or start + 1 >= len(lines) or not lines[start + 1].startswith("_atom_site."):
            continue
        columns: list[str] = []
        values: list[str] = []
        for body in lines[start + 1 :]:
            stripped = body.strip()
            if stripped.startswith("_atom_site.") and not values:
                columns.append(stripped.split()[0][len("_atom_site.") :])
            elif not stripped or stripped.startswith(("#", "_", "loop_", "data_")):
                if values:
                    break
            elif stripped.startswith(";"):
                raise NotImplementedError("multi-line text fields in _atom_site are not supported")
            else:
                values.extend(_unquote(token) for token in _CIF_TOKEN_RE.findall(stripped))
        return columns, values
    return [], []


def _cif_atoms(text: str) -> list[_Atom]:
    columns, values = _cif_atom_site(text)
    if not columns:
        return []
    if len(values) % len(columns):
        raise ValueError(f"_atom_site has {len(values)} values for {len(columns)} columns")
    index = {name: i for i, name in enumerate(columns)}

    def column(*names: str) -> int | None:
        return next((index[n] for n in names if n in index), None)

    record_i = column("group_PDB")
    name_i = column("auth_atom_id", "label_atom_id")
    resname_i = column("auth_comp_id", "label_comp_id")
    chain_i = column("auth_asym_id", "label_asym_id")
    seq_i = column("auth_seq_id", "label_seq_id")
    icode_i = column("pdbx_PDB_ins_code")
    model_i = column("pdbx_PDB_model_num")

    def get(row: list[str], i: int | None) -> str:
        return "" if i is None or row[i] in _MISSING else row[i]

    atoms: list[_Atom] = []
    first_model: str | None = None
    for offset in range(0, len(values), len(columns)):
        row = values[offset : offset + len(columns)]
        model = get(row, model_i)
        first_model = model if first_model is None else first_model
        if model != first_model:
            break
        residue = get(row, seq_i) + get(row, icode_i)
        atoms.append(
            _Atom(get(row, record_i) or "ATOM", get(row, name_i), get(row, resname_i), get(row, chain_i), residue)
        )
    return atoms


class Structure(GflowObject):
    """A 3D structure held as PDB or mmCIF text.

    Without an explicit ``format`` the text is sniffed: mmCIF when it opens with ``data_``.

    Attributes:
        format: ``"pdb"`` or ``"mmcif"``.
        text: The file's text, kept verbatim.
        name: Optional identifier, e.g. the file stem.
    """

    format: StructureFormat = "pdb"
    text: str
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") is None and isinstance(data.get("text"), str):
            return {**data, "format": _sniff_format(data["text"])}
        return data

    @field_validator("text")
    @classmethod
    def _check_text(cls, value: str, info: ValidationInfo) -> str:
        fmt = info.data.get("format")
        if fmt == "pdb" and not any(_is_pdb_atom_line(line) for line in value.splitlines()):
            raise ValueError("PDB text has no ATOM or HETATM records (with x, y, z in columns 31-54)")
        if fmt == "mmcif" and not _first_content_line(value).startswith("data_"):
            raise ValueError("mmCIF text must start with a 'data_' block header")
        return value

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, format: StructureFormat | None = None, name: str | None = None
    ) -> Structure:
        """Reads a structure file (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, optionally ``.gz``).

        Args:
            path: The file to read.
            format: Overrides the format inferred from the suffix (or, failing that, the content).
            name: Defaults to the file name without its suffixes.

        Returns:
            The structure.
        """
        path = Path(path)
        suffixes = [s.lower() for s in path.suffixes]
        compressed = bool(suffixes) and suffixes[-1] == ".gz"
        if compressed:
            suffixes = suffixes[:-1]
        data = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
        text = data.decode("utf-8", errors="replace")
        fmt = format or (_SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None) or _sniff_format(text)
        return cls(format=fmt, text=text, name=name or path.name.split(".")[0])

    def _atoms(self) -> list[_Atom]:
        return _pdb_atoms(self.text) if self.format == "pdb" else _cif_atoms(self.text)

    @property
    def num_atoms(self) -> int:
        """Number of ATOM and HETATM records in the first model."""
        return len(self._atoms())

    @property
    def chains(self) -> list[str]:
        """Chain ids in order of first appearance (first model; blank ids as ``""``)."""
        return list(dict.fromkeys(atom.chain for atom in self._atoms()))

    def sequence(self, chain: str | None = None) -> str:
        """One-letter sequence from CA atoms (unknown residue names become ``X``).

        HETATM residues count only when they are known modified amino acids, such as MSE.

        Args:
            chain: A chain id; None concatenates all chains in order of appearance.

        Returns:
            The sequence, one letter per residue.

        Raises:
            ValueError: If ``chain`` is not in the structure.
        """
        atoms = self._atoms()
        if chain is not None and chain not in {atom.chain for atom in atoms}:
            raise ValueError(f"no chain {chain!r} in structure (chains: {self.chains})")
        residues: dict[tuple[str, str], str] = {}
        for atom in atoms:
            if atom.name != "CA" or (chain is not None and atom.chain != chain):
                continue
            if atom.record == "HETATM" and atom.resname not in THREE_TO_ONE:
                continue  # ligands and ions such as calcium ("CA")
            residues.setdefault((atom.chain, atom.residue), THREE_TO_ONE.get(atom.resname.upper(), "X"))
        return "".join(residues.values())
