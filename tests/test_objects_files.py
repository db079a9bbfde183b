"""Issue 16 items 4 and 9: files are read within a size limit, and bad bytes are one error naming file and line."""

from __future__ import annotations

import gzip
import importlib.util
import tracemalloc
from pathlib import Path

import pytest

import gflow
from gflow._loader import load_target
from gflow.objects import Structure
from gflow.objects._limits import InputTooLarge
from gflow.objects.fasta import FastaError, read_fasta
from gflow.objects.structure import StructureFileError
from gflow.testing import run_flow

needs_gemmi = pytest.mark.skipif(importlib.util.find_spec("gemmi") is None, reason="gemmi (the structure extra)")


# -- item 4: compressed structure files are inflated only up to the limit ------------------------------------
ATOM = "ATOM      1  N   MET A   1      11.104   6.134  -6.504  1.00  0.00           N\n"


def _bomb(path, inflated: int) -> None:
    """A .pdb.gz that inflates to ``inflated`` bytes of ATOM records (it compresses about 300 to 1)."""
    block = (ATOM * ((1 << 20) // len(ATOM))).encode()
    with gzip.open(path, "wb", compresslevel=6) as out:
        for _ in range(inflated // len(block)):
            out.write(block)


@needs_gemmi
def test_a_gzip_bomb_is_refused_while_inflating(tmp_path, monkeypatch):
    monkeypatch.setenv("GFLOW_STRUCTURE_MAX_BYTES", str(2 << 20))
    bomb = tmp_path / "bomb.pdb.gz"
    _bomb(bomb, 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLarge, match=r"bomb.pdb.gz inflates to more than 2,097,152 bytes; refused "
                                                r"\(the limit is GFLOW_STRUCTURE_MAX_BYTES\)"):
            Structure.from_file(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the limit and a chunk, not the 64 MiB it inflates to (before: > 64 MiB)
    assert isinstance(InputTooLarge("x"), gflow.GflowError)


@needs_gemmi
def test_structure_files_within_the_limit_read_as_before_and_plain_ones_are_bounded_too(tmp_path, monkeypatch):
    small = tmp_path / "small.pdb.gz"
    small.write_bytes(gzip.compress((ATOM + "END\n").encode()))
    assert Structure.from_file(small).num_atoms == 1
    monkeypatch.setenv("GFLOW_STRUCTURE_MAX_BYTES", "40")
    with pytest.raises(InputTooLarge, match="small.pdb.gz inflates to more than 40 bytes"):
        Structure.from_file(small)
    plain = tmp_path / "plain.pdb"
    plain.write_text(ATOM)
    with pytest.raises(InputTooLarge, match="plain.pdb holds more than 40 bytes"):
        Structure.from_file(plain)


@needs_gemmi
def test_a_damaged_gzip_structure_is_one_clear_error(tmp_path):
    whole = gzip.compress((ATOM * 1000).encode())
    (tmp_path / "cut.pdb.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "fake.pdb.gz").write_bytes(b"not gzip at all")
    with pytest.raises(StructureFileError, match="cut.pdb.gz is not a readable gzip file: Compressed file ended"):
        Structure.from_file(tmp_path / "cut.pdb.gz")
    with pytest.raises(StructureFileError, match="fake.pdb.gz is not a readable gzip file"):
        Structure.from_file(tmp_path / "fake.pdb.gz")


# -- item 9: invalid UTF-8 (and other bad bytes) in a FASTA file or a precalc library -----------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_invalid_utf8_in_a_fasta_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.fasta"
    path.write_bytes(b">one\nMKTAY\n>two caf\xe9\nMKT\n")
    with pytest.raises(FastaError, match=r"FASTA file .*bad.fasta line 3: byte 9 of the line \(0xe9\) is not UTF-8"):
        read_fasta(path)
    with pytest.raises(FastaError, match="bad.fasta line 3"):  # a path given as a string
        read_fasta(str(path))
    assert isinstance(FastaError("x"), gflow.GflowError)
    path.write_bytes(b"\xef\xbb\xbf>one\nMKTAY\n")  # a byte-order mark is not an error
    assert [p.sequence for p in read_fasta(path)] == ["MKTAY"]


@pytest.fixture
def precalc():
    return load_target(f"{EXAMPLES / 'precalc.py'}:precalc")


def test_invalid_utf8_or_nul_in_a_precalc_library_names_the_file_and_line(precalc, tmp_path):
    read_library = precalc.fn.__globals__["read_library"]
    library_error = precalc.fn.__globals__["LibraryError"]
    lib = tmp_path / "lib.csv"
    lib.write_bytes(b"id,sequence\na,MKT\nb\xff,MKTQ\n")
    with pytest.raises(library_error, match=r"library .*lib.csv line 3: byte 2 of the line \(0xff\) is not UTF-8"):
        read_library(lib)
    failed = run_flow(precalc, str(lib), "no-model-needed")  # the library is read before the model
    assert failed.state is gflow.State.FAILED and "lib.csv line 3: byte 2" in str(failed.error)
    lib.write_bytes(b"id,sequence\na,MKT\nb,MK\x00TQ\n")
    with pytest.raises(library_error, match=r"lib.csv line 3: invalid residue '\\x00'"):
        read_library(lib)
    lib.write_text("id,sequence\na,MKT\nb," + "M" * 200_000 + "\n")  # past the csv module's field limit
    with pytest.raises(library_error, match="lib.csv line 3: field larger than field limit"):
        read_library(lib)
    lib.write_bytes(b"\xef\xbb\xbfid,sequence\na,MKT\n")  # Excel's byte-order mark
    assert [e.key for e in read_library(lib)] == ["a"]
    assert issubclass(library_error, gflow.GflowError)
