"""3D structures as PDB or mmCIF text, read with gemmi (the ``structure`` extra).

The text is kept verbatim (it is the object's identity); gemmi parses it once, when the object is
validated, and the parsed model is kept on the object for every property after that. What gemmi
reads leniently is checked as well, so that what is accepted can be used: PDB ``MODEL`` records
without ``ENDMDL`` or with repeated numbers, coordinates that are not numbers, mmCIF ``_atom_site``
loops with missing columns or values. Errors name the line (or the ``_atom_site`` row).

Limit: ``Structure.from_file`` refuses a file that holds, or inflates to, more than 512 MiB
(``GFLOW_STRUCTURE_MAX_BYTES``); a ``.gz`` is inflated a megabyte at a time and refused as soon as it
passes the limit (a 6 MB gzip bomb once took 4.1 GB of memory before an error).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import PrivateAttr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gflow.errors import GflowError

from ._base import GflowObject, shorten
from ._deps import require
from ._limits import STRUCTURE_MAX_BYTES_VAR, InputTooLarge, structure_max_bytes

StructureFormat = Literal["pdb", "mmcif"]

_SUFFIX_FORMATS: dict[str, StructureFormat] = {".pdb": "pdb", ".ent": "pdb", ".cif": "mmcif", ".mmcif": "mmcif"}
# an ATOM/HETATM record whose x, y, z columns (31-54) are not all blanks, digits, signs and points; the
# patterns start at a newline (a literal prefix the regex engine scans for fast), the text gets one prepended
_PDB_BAD_COORDS_RE = re.compile(r"\n(?:ATOM  |HETATM)(?![^\n]{24}[ 0-9.+\-]{24})[^\n]*", re.ASCII)
_PDB_ATOM_RE = re.compile(r"\n(?:ATOM  |HETATM)")
_PDB_MODEL_RE = re.compile(r"\n(MODEL(?=[ \r\n]|$)|ENDMDL)([^\n]*)")
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?(?:\([0-9]+\))?"
_CIF_NUMBERS_RE = re.compile(rf"(?:{_NUMBER}\n)*", re.ASCII)
_CIF_ERROR_LINE_RE = re.compile(r"^string:(\d+):\d+(?:\(\d+\))?:\s*")
_GEMMI_LINE_RE = re.compile(r"^Problem in line (\d+):\s*", re.I)
_CHUNK = 1 << 20
_CIF_REQUIRED = (("Cartn_x",), ("Cartn_y",), ("Cartn_z",), ("label_atom_id", "auth_atom_id"),
                 ("label_comp_id", "auth_comp_id"), ("label_asym_id", "auth_asym_id"))


class StructureFileError(GflowError, ValueError):
    """A structure file cannot be read: a damaged or truncated gzip stream (size limits raise InputTooLarge)."""


def _read_bounded(path: Path, compressed: bool) -> bytearray:
    """The bytes of ``path`` (inflated when ``compressed``), refused past :func:`structure_max_bytes`.

    A gzip file is inflated a megabyte at a time and refused as soon as it passes the limit, so at most
    the limit and one chunk are ever held, whatever the compression ratio.

    Raises:
        InputTooLarge: Past the limit (``GFLOW_STRUCTURE_MAX_BYTES``).
        StructureFileError: A damaged gzip stream.
    """
    limit = structure_max_bytes()
    data = bytearray()
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            while chunk := stream.read(_CHUNK):
                data += chunk
                if len(data) > limit:
                    what = "inflates to more than" if compressed else "holds more than"
                    raise InputTooLarge(f"structure file {path} {what} {limit:,} bytes; refused "
                                        f"(the limit is {STRUCTURE_MAX_BYTES_VAR})")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise StructureFileError(f"structure file {path} is not a readable gzip file: {exc}") from None
    return data


def _first_content_line(text: str) -> str:
    start = 0
    while start < len(text):  # line by line without splitting the whole (possibly large) text
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        stripped = text[start:end].strip()
        if stripped and not stripped.startswith("#"):
            return stripped
        start = end + 1
    return ""


def _sniff_format(text: str) -> StructureFormat:
    return "mmcif" if _first_content_line(text).startswith("data_") else "pdb"


def _line_of(text: str, offset: int) -> int:
    """The 1-based line of the newline at ``offset`` of a text that was given a leading newline."""
    return text.count("\n", 0, offset) + 1


def _check_pdb_records(text: str) -> None:
    """What gemmi reads leniently: MODEL/ENDMDL pairing, repeated model numbers, non-numeric coordinates.

    ``text`` starts with a newline (added by the caller), so line numbers are offsets' newline counts.
    """
    bad = _PDB_BAD_COORDS_RE.search(text)
    if bad is not None:
        raise ValueError(f"line {_line_of(text, bad.start())}: x, y, z (columns 31-54) are not numbers: "
                         f"{bad.group()[1:61]!r}")
    open_at: int | None = None
    seen: dict[str, int] = {}
    for match in _PDB_MODEL_RE.finditer(text):
        line = _line_of(text, match.start())
        if match.group(1) == "ENDMDL":
            if open_at is None and seen:
                raise ValueError(f"line {line}: ENDMDL without a MODEL")
            open_at = None  # with no MODEL record before it, ENDMDL ends a model (as gemmi reads such frames)
            continue
        if open_at is not None:
            raise ValueError(f"line {line}: MODEL, but the MODEL at line {open_at} has no ENDMDL")
        number = match.group(2).strip()
        number = str(int(number)) if number.isdigit() else number or "0"  # gemmi's reading: a blank MODEL is 0
        if number in seen:
            raise ValueError(f"line {line}: duplicate MODEL number {number} (first at line {seen[number]})")
        seen[number], open_at = line, line
    if open_at is not None and len(seen) > 1:  # a lone MODEL header with no ENDMDL is one model (MDAnalysis writes so)
        raise ValueError(f"line {open_at}: MODEL without ENDMDL")


def _check_cif_atom_site(block: Any) -> None:
    table = block.find_mmcif_category("_atom_site.")
    if len(table) == 0:
        raise ValueError("mmCIF has no _atom_site records (no atoms)")
    tags = {str(tag).removeprefix("_atom_site.") for tag in table.tags}
    missing = [" or ".join(names) for names in _CIF_REQUIRED if not any(n in tags for n in names)]
    if missing:
        raise ValueError(f"_atom_site lacks the column(s) {', '.join(missing)}")
    for axis in ("Cartn_x", "Cartn_y", "Cartn_z"):
        values = list(block.find_values(f"_atom_site.{axis}"))
        if _CIF_NUMBERS_RE.fullmatch("\n".join(values) + "\n") is None:
            row = next(i for i, v in enumerate(values) if _CIF_NUMBERS_RE.fullmatch(v + "\n") is None)
            raise ValueError(f"_atom_site row {row + 1}: {axis} {values[row]!r} is not a number")


def _gemmi_message(exc: Exception) -> str:
    message = str(exc).strip()
    for pattern in (_CIF_ERROR_LINE_RE, _GEMMI_LINE_RE):
        match = pattern.match(message)
        if match:
            return f"line {match.group(1)}: {message[match.end():]}"
    return message


_STANDARD_3 = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
               "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
               "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V"}
FORCE_FIELD_RESIDUES: dict[str, str] = {
    # protonation and disulfide states as AMBER, CHARMM, GROMOS and OPLS name them (gemmi's table says X)
    **dict.fromkeys(("HID", "HIE", "HIP", "HSD", "HSE", "HSP", "HISA", "HISB", "HISD", "HISE", "HISH", "HIS1",
                     "HIS2"), "H"),
    **dict.fromkeys(("CYX", "CYM", "CYN", "CYS1", "CYS2", "CYSH"), "C"),
    **dict.fromkeys(("ASH", "ASPH", "ASPP"), "D"), **dict.fromkeys(("GLH", "GLUH", "GLUP"), "E"),
    **dict.fromkeys(("LYN", "LSN", "LYSH", "LYP"), "K"), "ARGN": "R",
    "ADE": "A", "CYT": "C", "GUA": "G", "THY": "T", "URA": "U",  # CHARMM's nucleotides
}
_FORCE_FIELD_CAPS = frozenset(("NME", "NMA", "NHE", "NHH", "CT3"))  # C-terminal caps that gemmi's table lacks
_NUCLEIC_FF_RE = re.compile(r"[DR]?([ACGTU])[35N]?")
"""Residue names of MD force fields that are a standard amino acid in another state, and its letter; AMBER's
terminal names (``NALA``, ``CGLY``: N or C before a standard name) are read the same way, and nucleotides as
AMBER (``DA5``, ``RU3``) and CHARMM (``ADE``, ``CYT``) name them."""


def _force_field_letter(name: str) -> str | None:
    letter = FORCE_FIELD_RESIDUES.get(name)
    if letter is None and len(name) == 4 and name[0] in "NC":
        letter = _STANDARD_3.get(name[1:])
    if letter is None:
        match = _NUCLEIC_FF_RE.fullmatch(name)
        letter = match.group(1) if match else None
    return letter


def _has_backbone(residue: Any) -> bool:
    """A peptide's CA beside its N or C, or a nucleotide's C1' and C4' (names only: MD files often have no element
    column, and gemmi then reads a left-aligned CA as calcium)."""
    names = {atom.name for atom in residue}
    return ("CA" in names and bool(names & {"N", "C"})) or {"C1'", "C4'"} <= names or {"C1*", "C4*"} <= names


def _residue_letter(gemmi: Any, residue: Any) -> str | None:
    """One letter of a polymer residue, or None for what is not part of the polymer's sequence.

    Amino acids and nucleotides by gemmi's table (modified ones as their parent, MSE -> M) or by their force-field
    name (HSD -> H); caps (ACE, NH2: gemmi's ELS kind) are left out. Anything else counts only with a backbone,
    as ``X``: waters, ions, lipids and solvent written as ATOM records inside a protein's chain (MD outputs) are
    not residues of the sequence.
    """
    name = residue.name
    info = gemmi.find_tabulated_residue(name)
    if info is not None and (info.is_amino_acid() or info.is_nucleic_acid()):
        code = info.one_letter_code
        return str(code.upper()) if code.isalpha() else "X"
    letter = _force_field_letter(name)
    if letter is not None and _has_backbone(residue):
        return letter
    if name in _FORCE_FIELD_CAPS or info is not None and info.kind == gemmi.ResidueKind.ELS:  # caps (ACE, NH2)
        return None
    return "X" if _has_backbone(residue) else None


class _Parsed:
    """A structure parsed by gemmi; summaries computed once, on first use."""

    __slots__ = ("gemmi", "model", "_chains", "_sequences")

    def __init__(self, gemmi_structure: Any) -> None:
        self.gemmi = gemmi_structure
        self.model = gemmi_structure[0]
        self._chains: list[str] | None = None
        self._sequences: dict[str, str] | None = None

    @property
    def chains(self) -> list[str]:
        if self._chains is None:
            self._chains = list(dict.fromkeys(chain.name for chain in self.model))
        return self._chains

    @property
    def sequences(self) -> dict[str, str]:
        if self._sequences is None:
            gemmi = require("gemmi", "structure", "Structure")
            self.gemmi.setup_entities()
            parts: dict[str, list[str]] = {name: [] for name in self.chains}
            for chain in self.model:
                polymer = chain.get_polymer()
                if polymer.length() == 0:
                    continue
                letters = parts[chain.name]
                for residue in polymer.first_conformer():
                    letter = _residue_letter(gemmi, residue)
                    if letter is not None:
                        letters.append(letter)
            self._sequences = {name: "".join(letters) for name, letters in parts.items()}
        return self._sequences


def _read_pdb(gemmi: Any, text: str) -> Any:
    try:
        return gemmi.read_pdb_string(text)
    except RuntimeError as exc:
        if "charge" not in str(exc):
            raise
    # files from before 1996 hold the entry id and a serial number in columns 73-80, where gemmi
    # reads the segment, element and charge: read them as gemmi's own tests read such files
    return gemmi.read_pdb_string(text, max_line_length=72)


def _parse(fmt: StructureFormat, text: str) -> _Parsed:
    gemmi = require("gemmi", "structure", "Structure")
    if fmt == "pdb":
        if _PDB_ATOM_RE.search("\n" + text[:80]) is None and _PDB_ATOM_RE.search(text) is None:
            raise ValueError("PDB text has no ATOM or HETATM records (with x, y, z in columns 31-54)")
        _check_pdb_records("\n" + text)
        try:
            structure = _read_pdb(gemmi, text)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(_gemmi_message(exc)) from None
    else:
        if not _first_content_line(text).startswith("data_"):
            raise ValueError("mmCIF text must start with a 'data_' block header")
        try:
            document = gemmi.cif.read_string(text)
            block = document[0]
            _check_cif_atom_site(block)
            structure = gemmi.make_structure_from_block(block)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ValueError(_gemmi_message(exc)) from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise ValueError("no atoms in the first model")
    return _Parsed(structure)


class Structure(GflowObject):
    """A 3D structure held as PDB or mmCIF text, parsed once with gemmi.

    Without an explicit ``format`` the text is sniffed: mmCIF when it opens with ``data_``.

    Attributes:
        format: ``"pdb"`` or ``"mmcif"``.
        text: The file's text, kept verbatim.
        name: Optional identifier, e.g. the file stem.
    """

    format: StructureFormat = "pdb"
    text: str
    name: str | None = None
    _parsed: _Parsed | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _infer_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") is None and isinstance(data.get("text"), str):
            return {**data, "format": _sniff_format(data["text"])}
        return data

    @model_validator(mode="after")
    def _parse_once(self) -> Structure:
        try:
            self._parsed = _parse(self.format, self.text)
        except ValueError as exc:
            error = PydanticCustomError("value_error", "{message}", {"message": str(exc)})
            details = InitErrorDetails(type=error, loc=("text",), input=self.text[:200])
            raise ValidationError.from_exception_data(type(self).__name__, [details]) from None
        return self

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

        Raises:
            InputTooLarge: If the file holds, or inflates to, more than ``GFLOW_STRUCTURE_MAX_BYTES``
                (default 512 MiB); a ``.gz`` is refused while it is inflated, never inflated whole.
            StructureFileError: If a ``.gz`` file is damaged or truncated.
        """
        path = Path(path)
        suffixes = [s.lower() for s in path.suffixes]
        compressed = bool(suffixes) and suffixes[-1] == ".gz"
        if compressed:
            suffixes = suffixes[:-1]
        text = _read_bounded(path, compressed).decode("utf-8", errors="replace")
        fmt = format or (_SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None) or _sniff_format(text)
        return cls(format=fmt, text=text, name=name or path.name.split(".")[0])

    @property
    def parsed(self) -> Any:
        """The ``gemmi.Structure`` (parsed once; treat it as read-only, it is shared by every property)."""
        return self._state().gemmi

    def _state(self) -> _Parsed:
        if self._parsed is None:  # built without validation (model_construct)
            self._parsed = _parse(self.format, self.text)
        return self._parsed

    @property
    def num_models(self) -> int:
        """Number of models (NMR ensembles have several; properties describe the first)."""
        return len(self._state().gemmi)

    @property
    def num_atoms(self) -> int:
        """Number of atom sites in the first model (alternate locations count separately)."""
        return int(self._state().model.count_atom_sites())

    @property
    def chains(self) -> list[str]:
        """Chain ids (author ids in mmCIF) in order of first appearance in the first model."""
        return list(self._state().chains)

    @property
    def num_residues(self) -> int:
        """Polymer residues in the first model: what the sequences hold (no waters, ions, ligands, caps)."""
        return sum(len(s) for s in self._state().sequences.values())

    def sequences(self) -> dict[str, str]:
        """Each chain's polymer sequence, one letter per residue, chains in order.

        Modified residues become their parent (MSE -> M, CSO -> C, as gemmi's residue table says), and so
        do force-field names (HSD -> H, CYX -> C); other residues count as ``X`` only with a backbone (a CA
        beside N or C, a sugar's C1' and C4'), so waters, ions, lipids and ligands written inside a chain,
        as MD outputs write them, and caps are not residues of the sequence (docs/objects.md). A chain with
        no polymer (only ligands or waters) maps to ``""``.
        """
        return dict(self._state().sequences)

    def sequence(self, chain: str | None = None) -> str:
        """One chain's polymer sequence, or all chains' concatenated in order (see :meth:`sequences`).

        Raises:
            ValueError: If ``chain`` is not in the structure.
        """
        sequences = self._state().sequences
        if chain is None:
            return "".join(sequences.values())
        if chain not in sequences:
            raise ValueError(f"no chain {chain!r} in structure (chains: {self.chains})")
        return sequences[chain]

    def summary(self) -> str:
        """``Structure 4ake (pdb): 1 model, 2 chains, 428 residues, 3,341 atoms; MRIILLGAPGAGKGTQ...KILG``."""
        models = f"{self.num_models} model{'s' if self.num_models != 1 else ''}"
        chains = f"{len(self.chains)} chain{'s' if len(self.chains) != 1 else ''}"
        who = f"Structure {self.name} ({self.format})" if self.name else f"Structure ({self.format})"
        return (f"{who}: {models}, {chains}, {self.num_residues:,} residues, {self.num_atoms:,} atoms; "
                f"{shorten(self.sequence())}").removesuffix("; ")

    def to_file(self, path: str | os.PathLike[str]) -> Path:
        """Writes the text verbatim (gzip-compressed when ``path`` ends in ``.gz``); returns the path."""
        path = Path(path)
        data = self.text.encode("utf-8")
        path.write_bytes(gzip.compress(data) if path.suffix.lower() == ".gz" else data)
        return path


def summarize(structures: Sequence[Structure]) -> list[dict[str, Any]]:
    """One row per structure: name, format, models, atoms, chains, residues (for tables and reports)."""
    return [{"name": s.name, "format": s.format, "models": s.num_models, "atoms": s.num_atoms,
             "chains": len(s.chains), "residues": s.num_residues} for s in structures]
