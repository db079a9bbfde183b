"""Issue 16 items 4 and 9: files are read within a size limit, and bad bytes are one error naming file and line."""

from __future__ import annotations

import gzip
import importlib.util
import tracemalloc

import pytest

import gflow
from gflow.objects import Structure
from gflow.objects._limits import InputTooLarge
from gflow.objects.structure import StructureFileError

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
