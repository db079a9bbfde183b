"""Precalculation: a model's predictions over a whole reference library, packed onto many workers.

    gflow run examples/precalc.py:precalc --param library=examples/data/library.csv \\
        --param model=/path/to/esm2_folder --param sample=16            # a test run on 16 entries
    gflow run examples/precalc.py:precalc --param library=lib.csv --param model=... \\
        --executor dask://scheduler:8786 --tag cycle2_10k

The library is a CSV/TSV with ``id`` and ``sequence`` columns (or a FASTA file). The flow reads and
checks all of it on the driver first (a bad row fails the run before anything is submitted, naming
its line), takes ``sample`` entries for a test run, and maps ``predict_entries`` over the entries:
one task run per entry (its own state, outcome, retries and cache key), packed ``per_job`` entries to
a job -- as many jobs as there are ``workers``, never an empty one -- and run in batches of 32
(``batch_size``) with the network loaded once per worker (``@gflow.warm`` in esm_scoring). A packed
job killed midway loses only its unfinished entries, and ``cache=True`` makes a rerun (or ``gflow
resume``) take every finished entry from the store. Predictions are validated by the ``Prediction``
model before they are returned; the result groups them into the same chunks as before (``split``).

The prediction is ESM-2's wild-type marginal: mean log p(residue | sequence) from one forward pass.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from esm_scoring import ESM_IMAGE, esm_unmasked, load_esm
from pydantic import Field

import gflow
from gflow.models import resolve_model
from gflow.objects import GflowObject, Model, Protein
from gflow.objects._base import FiniteFloat
from gflow.objects._files import read_utf8
from gflow.objects.fasta import read_fasta


class LibraryError(gflow.GflowError, ValueError):
    """A library file is malformed; the message names the file, the line and the fix."""


class Entry(GflowObject):
    """One library entry: its key (unique in the library) and its protein."""

    key: str = Field(min_length=1)
    protein: Protein


class Prediction(GflowObject):
    """One prediction, validated before it is written.

    Attributes:
        key: The library entry's key.
        model: The model's source digest.
        score: Mean log-probability per residue (nats); finite.
        length: Residues scored.
    """

    key: str = Field(min_length=1)
    model: str = Field(min_length=1)
    score: FiniteFloat = Field(le=0.0)
    length: int = Field(ge=1)


class PredictionChunk(GflowObject):
    """One chunk's predictions: the unit written in bulk (one artifact per chunk)."""

    index: int = Field(ge=0)
    model: str
    predictions: tuple[Prediction, ...]


class PrecalcResult(GflowObject):
    """What a precalc run produced: every chunk, in library order."""

    model: str
    model_name: str
    entries: int = Field(ge=0)
    chunks: tuple[PredictionChunk, ...]

    def predictions(self) -> list[Prediction]:
        """All predictions, in library order."""
        return [p for chunk in self.chunks for p in chunk.predictions]

    def lookup(self, key: str) -> Prediction | None:
        """The prediction for one library key, or None."""
        return next((p for p in self.predictions() if p.key == key), None)


def read_library(path: str | os.PathLike[str]) -> list[Entry]:
    """Reads a library: CSV/TSV with ``id`` and ``sequence`` columns, or FASTA (``.fa``, ``.fasta``).

    Raises:
        LibraryError: For a missing file or column, a bad or duplicate row -- naming the line.
    """
    p = Path(path)
    if not p.is_file():
        raise LibraryError(f"library {p} does not exist")
    if p.suffix.lower() in (".fa", ".fasta", ".faa"):
        try:
            proteins = read_fasta(p)
        except ValueError as exc:
            raise LibraryError(f"library {p}: {exc}") from None
        entries = [Entry(key=q.name or f"entry_{i + 1}", protein=q) for i, q in enumerate(proteins)]
        _check_unique(p, [(e.key, i + 1) for i, e in enumerate(entries)])
        return entries
    text = read_utf8(p, what="library", error=LibraryError)
    dialect = "excel-tab" if p.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else "excel"
    reader = csv.reader(io.StringIO(text), dialect=dialect)
    try:
        return _read_rows(p, reader)
    except csv.Error as exc:  # a NUL byte, a quote left open at the end of the file
        raise LibraryError(f"library {p} line {reader.line_num}: {exc}") from None


def _read_rows(p: Path, reader: Any) -> list[Entry]:
    header = next(reader, None)
    if header is None:
        raise LibraryError(f"library {p} is empty")
    columns = [h.strip().lower() for h in header]
    if "id" not in columns or "sequence" not in columns:
        raise LibraryError(f"library {p} line 1: the header needs 'id' and 'sequence' columns, found {header}")
    key_i, seq_i = columns.index("id"), columns.index("sequence")
    entries: list[Entry] = []
    keys: list[tuple[str, int]] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise LibraryError(f"library {p} line {line}: {len(row)} fields, the header has {len(columns)}")
        try:
            entry = Entry(key=row[key_i].strip(), protein=Protein(sequence=row[seq_i], name=row[key_i].strip()))
        except ValueError as exc:
            message = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()) \
                if hasattr(exc, "errors") else str(exc)
            raise LibraryError(f"library {p} line {line}: {message}") from None
        entries.append(entry)
        keys.append((entry.key, line))
    _check_unique(p, keys)
    return entries


def _check_unique(path: Path, keys: list[tuple[str, int]]) -> None:
    seen: dict[str, int] = {}
    for key, line in keys:
        if key in seen:
            raise LibraryError(f"library {path} line {line}: id {key!r} repeats line {seen[key]}; ids must be unique")
        seen[key] = line


def split(entries: list[Entry], workers: int) -> list[list[Entry]]:
    """``min(workers, len(entries))`` contiguous chunks whose sizes differ by at most one."""
    n = min(workers, len(entries))
    if n == 0:
        return []
    size, extra = divmod(len(entries), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(entries[start:end])
        start = end
    return chunks


def predict(entries: list[Entry], model: Model, index: int = 0) -> PredictionChunk:
    """The work of one chunk, without gflow (what the benchmark's bare loop runs too)."""
    tokenizer, net, device = load_esm(model)
    order = sorted(range(len(entries)), key=lambda i: len(entries[i].protein))
    scores: dict[int, float] = {}
    for start in range(0, len(order), 32):
        batch = order[start : start + 32]
        for i, value in zip(batch, esm_unmasked(tokenizer, net, device,
                                                [entries[i].protein.sequence for i in batch]), strict=True):
            scores[i] = value
    return PredictionChunk(index=index, model=model.source, predictions=tuple(
        Prediction(key=e.key, model=model.source, score=round(scores[i], 6), length=len(e.protein))
        for i, e in enumerate(entries)))


@gflow.task(image=ESM_IMAGE, cache=True, retries=1, resources=gflow.Resources(cpu=1, memory="4Gi"))
def predict_chunk(entries: list[Entry], index: int, model: Model) -> PredictionChunk:
    """Predictions for one chunk, validated (``Prediction``) before they are returned and written."""
    return predict(entries, model, index)


@gflow.task(image=ESM_IMAGE, cache=True, retries=1, batch_size=32, resources=gflow.Resources(cpu=1, memory="4Gi"))
def predict_entries(entries: list[Entry], model: Model) -> list[Prediction]:
    """One prediction per entry. Vectorized: ``entries`` is a batch of up to 32 that gflow groups; each
    entry is still its own task run."""
    return list(predict(entries, model).predictions)


@gflow.flow
def precalc(library: str, model: str, sample: int | None = None, workers: int = 50) -> PrecalcResult:
    """Precomputes ``model``'s prediction for every entry of ``library`` (or ``sample`` of them)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    entries = read_library(library)
    if sample is not None:
        if sample < 1:
            raise ValueError(f"sample must be at least 1, got {sample}")
        if sample > len(entries):
            raise ValueError(f"sample={sample} is larger than the library ({len(entries)} entries); "
                             f"leave sample unset to run them all")
        entries = entries[:sample]
    model_obj = resolve_model(model)
    chunks = split(entries, workers)
    per_job = max(1, -(-len(entries) // workers))  # `workers` jobs on a job backend (AWS Batch, Slurm, ...)
    results = predict_entries.map(entries, model=model_obj, per_job=per_job)
    futures = iter(results)
    result = PrecalcResult(model=model_obj.source, model_name=model_obj.name, entries=len(entries), chunks=tuple(
        PredictionChunk(index=i, model=model_obj.source, predictions=tuple(next(futures).result() for _ in chunk))
        for i, chunk in enumerate(chunks)))
    # a queryable table (GraphQL `predictions(model:, keys:)`), one row per (model, input key)
    gflow.tables.record("predictions", result.predictions(), key=("model", "key"))
    # and the model's name, so that `predictions(model:)` takes "esm2_t6_8M_UR50D" as well as its digest
    gflow.tables.record("models", [{"name": model_obj.name, "digest": model_obj.source}], key=("name", "digest"))
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library", nargs="?", default=os.path.join(os.path.dirname(__file__), "data", "library.csv"))
    parser.add_argument("--model", required=True, help="a save_pretrained folder or a cached hub id")
    parser.add_argument("--sample", type=int, default=None)
    args = parser.parse_args()
    result = precalc(args.library, model=args.model, sample=args.sample)
    print(f"{result.entries} predictions in {len(result.chunks)} chunks for {result.model_name}")
