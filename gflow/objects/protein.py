"""Protein sequences and point mutations."""

from __future__ import annotations

import os
import re
from typing import Any, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from . import fasta as _fasta
from ._base import GflowObject, Metadata, shorten

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
AMBIGUOUS_RESIDUES = "XUOBZJ"
ALLOWED_RESIDUES = STANDARD_RESIDUES + AMBIGUOUS_RESIDUES
_ALLOWED_SET = frozenset(ALLOWED_RESIDUES)
_MUTATION_RE = re.compile(r"^\s*([A-Za-z])(\d+)([A-Za-z])\s*$")
_WHITESPACE_RE = re.compile(r"\s+")
_RECORD_RE = re.compile(r"([A-Z])(\d+)([A-Z])")  # a mutation as a name records it


def _check_residue(value: str) -> str:
    letter = value.strip()
    letter = letter.upper() if letter.isascii() else letter  # 'ı'.upper() is 'I'
    if len(letter) != 1 or letter not in _ALLOWED_SET:
        raise ValueError(f"invalid residue {value!r} (allowed: {ALLOWED_RESIDUES})")
    return letter


class Mutation(GflowObject):
    """A point substitution, written like ``"A23G"`` (1-based position).

    Attributes:
        position: 1-based residue position.
        wt: Wild-type residue expected at ``position``.
        mt: Residue it becomes.
    """

    position: int = Field(ge=1)
    wt: str
    mt: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            match = _MUTATION_RE.match(data)
            if match is None:
                raise ValueError(f"invalid mutation {data!r} (expected e.g. 'A23G')")
            wt, position, mt = match.groups()
            return {"position": int(position), "wt": wt, "mt": mt}
        return data

    @field_validator("wt", "mt")
    @classmethod
    def _residue(cls, value: str) -> str:
        return _check_residue(value)

    @classmethod
    def parse(cls, text: str) -> Mutation:
        """Parses ``"A23G"`` into a Mutation.

        Raises:
            pydantic.ValidationError: If the text is not of the form ``<wt><position><mt>``.
        """
        return cls.model_validate(text)

    @model_validator(mode="after")
    def _changes_something(self) -> Mutation:
        if self.wt == self.mt:
            raise ValueError(f"mutation {self} changes nothing ({self.wt} stays {self.mt} at position "
                             f"{self.position}); pick another residue")
        return self

    def __str__(self) -> str:
        return f"{self.wt}{self.position}{self.mt}"

    def summary(self) -> str:
        return f"Mutation {self}"


def _parse_mutation(text: str) -> Mutation:
    """Mutation.parse, its error as one line (``mutation A4A changes nothing ...``)."""
    try:
        return Mutation.parse(text)
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None


def _mutated_name(name: str, sequence: str, mutations: list[Mutation]) -> str:
    """``name`` with ``mutations`` recorded: a position its trailing ``_A23G`` parts already hold is rewritten
    there (from the first wild type), or dropped when it returns to it; other mutations are appended.

    A trailing part counts as a record only where ``sequence`` holds its mutant residue (a name such as
    ``T4L`` before the first ``_`` is never read as one).
    """
    base, *parts = name.split("_")
    records: list[tuple[int, str, str]] = []  # (position, first wild type, mutant), in name order
    while parts:
        match = _RECORD_RE.fullmatch(parts[-1])
        if match is None or not 1 <= int(match.group(2)) <= len(sequence) or \
                sequence[int(match.group(2)) - 1] != match.group(3):
            break
        records.insert(0, (int(match.group(2)), match.group(1), match.group(3)))
        parts.pop()
    recorded = {position: (wt, mt) for position, wt, mt in records}
    if len(recorded) != len(records):  # a position twice: not a record gflow wrote, leave the name as it is
        parts, recorded = parts + [f"{wt}{pos}{mt}" for pos, wt, mt in records], {}
    for mutation in mutations:
        first = recorded[mutation.position][0] if mutation.position in recorded else mutation.wt
        recorded.pop(mutation.position, None)
        if first != mutation.mt:
            recorded[mutation.position] = (first, mutation.mt)
    return "_".join([base, *parts, *(f"{wt}{pos}{mt}" for pos, (wt, mt) in recorded.items())])


class Protein(GflowObject):
    """A protein sequence with an optional name and metadata.

    ``Protein.model_validate("MKT...")`` accepts a bare sequence string.

    Attributes:
        sequence: One-letter residues (IUPAC, with B, Z, J, X, U, O): whitespace removed, letters upper-cased, a
            trailing translation stop `*` dropped; non-ASCII characters are refused.
        name: Optional identifier, e.g. a FASTA header's first word.
        metadata: JSON-safe annotations.
    """

    sequence: str
    name: str | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"sequence": data}
        return data

    @field_validator("sequence")
    @classmethod
    def _clean_sequence(cls, value: str) -> str:
        sequence = _WHITESPACE_RE.sub("", value)
        if not sequence.isascii():  # before upper-casing, which maps e.g. 'ß' to 'SS'
            index = next(i for i, c in enumerate(sequence) if not c.isascii())
            raise ValueError(f"invalid residue {sequence[index]!r} at position {index + 1}: not an ASCII letter "
                             f"(allowed: {ALLOWED_RESIDUES})")
        sequence = sequence.upper()
        if sequence.endswith("*"):  # a translation stop
            sequence = sequence[:-1]
        if not sequence:
            raise ValueError("sequence is empty")
        for index, residue in enumerate(sequence):
            if residue not in _ALLOWED_SET:
                raise ValueError(f"invalid residue {residue!r} at position {index + 1} (allowed: {ALLOWED_RESIDUES})")
        return sequence

    def __len__(self) -> int:
        return len(self.sequence)

    def summary(self) -> str:
        """``Protein NAME: MKTAYIAKQRQISF...VAGLNGAK (214 aa)``."""
        who = f"Protein {self.name}:" if self.name else "Protein"
        return f"{who} {shorten(self.sequence)} ({len(self.sequence)} aa)"

    def mutate(self, *mutations: str | Mutation) -> Self:
        """Applies point mutations, checking each wild-type residue.

        Args:
            *mutations: ``"A23G"``-style strings or Mutation objects, at distinct positions.

        Returns:
            A new Protein; its name (when set) gets the mutations appended, e.g. ``"parent_A23G"``. A position
            that the name already records as mutated is rewritten there: ``parent_V196W`` mutated ``W196E`` is
            ``parent_V196E``, and mutated back (``W196V``) is ``parent``.

        Raises:
            ValueError: If a position is out of range, repeated, or holds a different residue; a mutation that
                changes nothing (``A4A``) is refused when it is parsed.
        """
        parsed = [m if isinstance(m, Mutation) else _parse_mutation(m) for m in mutations]
        residues = list(self.sequence)
        seen: set[int] = set()
        for mutation in parsed:
            if mutation.position in seen:
                raise ValueError(f"mutation {mutation}: position {mutation.position} is mutated twice")
            seen.add(mutation.position)
            if mutation.position > len(residues):
                raise ValueError(
                    f"mutation {mutation}: position {mutation.position} is beyond the sequence length {len(residues)}"
                )
            actual = residues[mutation.position - 1]
            if actual != mutation.wt:
                raise ValueError(
                    f"mutation {mutation}: position {mutation.position} holds {actual!r}, not {mutation.wt!r}"
                )
            residues[mutation.position - 1] = mutation.mt
        name = self.name
        if name is not None and parsed:
            name = _mutated_name(name, self.sequence, parsed)
        return self.with_(sequence="".join(residues), name=name)

    def mutations_from(self, parent: Protein) -> list[Mutation]:
        """Lists the substitutions that turn ``parent`` into this protein, by position.

        Raises:
            ValueError: If the two sequences differ in length.
        """
        if len(parent) != len(self):
            raise ValueError(f"cannot compare sequences of different lengths ({len(parent)} and {len(self)})")
        return [
            Mutation(position=index + 1, wt=wt, mt=mt)
            for index, (wt, mt) in enumerate(zip(parent.sequence, self.sequence, strict=True))
            if wt != mt
        ]

    @classmethod
    def from_fasta(cls, text_or_path: str | os.PathLike[str]) -> list[Protein]:
        """Reads proteins from FASTA text or a FASTA file.

        A header's first word becomes the name, the rest ``metadata["description"]``.

        Args:
            text_or_path: FASTA text (starting with ``>``) or a path to a file.

        Returns:
            The proteins in file order.

        Raises:
            ValueError: If the input is neither FASTA text nor an existing file, or is malformed (naming the
                record, its number and line).
        """
        return list(_fasta.iter_fasta(text_or_path, cls))

    def to_fasta(self, width: int = 60) -> str:
        """Renders this protein as a FASTA record (``from_fasta`` reads it back).

        Args:
            width: Residues per line; 0 puts the whole sequence on one line.

        Returns:
            The record, ending in a newline.
        """
        header = self.name or "protein"
        description = self.metadata.get("description")
        if description is not None:
            header = f"{header} {description}"
        step = width if width > 0 else len(self.sequence)
        lines = [self.sequence[i : i + step] for i in range(0, len(self.sequence), step)]
        return "\n".join([f">{header}", *lines]) + "\n"


_fasta.default_record_class = Protein
