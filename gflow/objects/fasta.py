"""FASTA reading and writing for many records, with errors that name the record and its line."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gflow.errors import GflowError

from ._base import Metadata
from ._files import read_utf8

if TYPE_CHECKING:
    from .protein import Protein

__all__ = ["FastaError", "iter_fasta", "read_fasta", "write_fasta"]


#: What records become when no ``cls`` is given: ``Protein``, set by ``gflow.objects.protein`` on import.
#: (fasta sits below protein, which reads and writes FASTA: fasta never imports protein.)
default_record_class: type[Protein] | None = None


class FastaError(GflowError, ValueError):
    """A FASTA text is malformed; the message names the record (number, name) and its line."""


def _fasta_text(text_or_path: str | os.PathLike[str]) -> str:
    if isinstance(text_or_path, os.PathLike):
        return read_utf8(text_or_path, what="FASTA file", error=FastaError)
    if text_or_path.lstrip().startswith((">", ";")):
        return text_or_path
    if "\n" not in text_or_path and Path(text_or_path).is_file():
        return read_utf8(text_or_path, what="FASTA file", error=FastaError)
    raise FastaError("expected FASTA text starting with '>' or the path of an existing file")


def _records(text: str) -> Iterator[tuple[int, int, str, list[str]]]:
    """Yields (record number, header line number, header, sequence lines) in file order."""
    header: str | None = None
    header_line = 0
    chunks: list[str] = []
    count = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                yield count, header_line, header, chunks
            count += 1
            header, header_line, chunks = line[1:].strip(), number, []
        elif header is None:
            raise FastaError(f"FASTA line {number}: sequence before the first '>' header")
        else:
            chunks.append(line)
    if header is not None:
        yield count, header_line, header, chunks


def iter_fasta(text_or_path: str | os.PathLike[str], cls: type[Protein] | None = None) -> Iterator[Protein]:
    """Reads proteins one record at a time from FASTA text or a file.

    A header's first word becomes the name, the rest ``metadata["description"]``.

    Raises:
        FastaError: (a ValueError) naming the record number, its name and line, and what is wrong.
    """
    if cls is None:
        if default_record_class is None:  # pragma: no cover - gflow.objects always imports protein first
            raise TypeError("iter_fasta: give cls (no default record class is registered)")
        cls = default_record_class
    for count, line, header, chunks in _records(_fasta_text(text_or_path)):
        name, description = [*header.split(maxsplit=1), "", ""][:2]
        metadata: Metadata = {"description": description} if description else {}
        try:
            yield cls(sequence="".join(chunks), name=name or None, metadata=metadata)
        except ValidationError as exc:
            message = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
            raise FastaError(f"FASTA record {header!r} (record {count}, line {line}): {message}") from exc


def read_fasta(text_or_path: str | os.PathLike[str]) -> list[Protein]:
    """Reads every record of FASTA text or a FASTA file (see :func:`iter_fasta`)."""
    return list(iter_fasta(text_or_path))


def write_fasta(proteins: Iterable[Protein], path: str | os.PathLike[str] | None = None, width: int = 60) -> str:
    """Renders proteins as FASTA (unnamed ones as ``protein_<n>``); writes the file too when ``path`` is given.

    Returns:
        The FASTA text.
    """
    parts = []
    for number, protein in enumerate(proteins, start=1):
        record = protein if protein.name else protein.with_(name=f"protein_{number}")
        parts.append(record.to_fasta(width=width))
    text = "".join(parts)
    if path is not None:
        Path(path).write_text(text)
    return text
