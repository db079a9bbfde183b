"""Issue 23 item 2: ``Structure.sequence()`` against gemmi on the real PDB/mmCIF files of MDAnalysisTests.

    python benchmarks/bench_real_structures.py [--data DIR] [--show N] [--tree DIR]

Every ``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, ``.pdbx`` (plain or ``.gz``) under MDAnalysisTests' data folder
(``pip install MDAnalysisTests``; ``--data`` for another folder) is read by gemmi (``gemmi.read_structure``) and
by ``Structure.from_file``, and the first model's sequence is compared with two references:

- ``gemmi`` (as is): per chain, gemmi's polymer (``setup_entities``; ``get_polymer``; first conformer), one letter
  per residue from gemmi's table (``X`` for what it does not know). In MD outputs gemmi's polymer holds the
  waters, ions and lipids written in the protein's chain, so this is what gflow read before the fix.
- ``gemmi+backbone``: the same polymer, less the residues that gemmi's table does not call amino or nucleic
  acids and that have no backbone (no CA, no P/C4'), and less caps (gemmi's ``ELS`` kind): the rule gflow
  follows. gflow also reads force-field names (HSD, HIE, CYX, ASH, NALA, ...) as their parent residue where gemmi
  says ``X``; such differences are counted apart ("ff names").

A file both refuse is left out; one only gflow refuses is a disagreement (the error is shown). ``--tree`` reads
with another checkout's gflow (e.g. the code before the fix), against the same references.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import gemmi

ROOT = Path(__file__).resolve().parents[1]

SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdbx")


def data_folder() -> Path:
    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MDAnalysisTests is not installed (pip install MDAnalysisTests) and --data was not given")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def structure_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.name.lower().removesuffix(".gz")
        if path.is_file() and name.endswith(SUFFIXES):
            found.append(path)
    return found


def _read_gemmi(path: Path) -> Any:
    fmt = gemmi.CoorFormat.Mmcif if ".pdbx" in path.name.lower() else gemmi.CoorFormat.Detect
    try:
        return gemmi.read_structure(str(path), format=fmt)
    except RuntimeError as exc:
        if "charge" not in str(exc):
            raise
    return gemmi.read_structure(str(path), max_line_length=72)  # the entry id in columns 73-80, as gflow reads it


def _has_backbone(residue: Any) -> bool:
    """A peptide's CA beside its N or C, or a nucleotide's C1' and C4' (by name: MD files lack elements)."""
    names = {atom.name for atom in residue}
    return ("CA" in names and bool(names & {"N", "C"})) or {"C1'", "C4'"} <= names or {"C1*", "C4*"} <= names


def gemmi_sequence(path: Path, *, backbone: bool) -> str:
    st = _read_gemmi(path)
    st.setup_entities()
    letters = []
    for chain in st[0]:
        for residue in chain.get_polymer().first_conformer():
            info = gemmi.find_tabulated_residue(residue.name)
            polymer_kind = info is not None and (info.is_amino_acid() or info.is_nucleic_acid())
            if backbone and not polymer_kind:
                if info is not None and info.kind == gemmi.ResidueKind.ELS or not _has_backbone(residue):
                    continue
            code = info.one_letter_code if info is not None else " "
            letters.append(code.upper() if code.isalpha() else "X")
    return "".join(letters)


def _ff_only(ours: str, reference: str) -> bool:
    """Whether the only differences are residues gemmi calls X that gflow reads as a force-field name's parent."""
    return len(ours) == len(reference) and all(a == b or b == "X" for a, b in zip(ours, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--show", type=int, default=40, help="disagreements to print")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the gflow checkout to measure (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from gflow.objects import Structure
    files = structure_files(args.data or data_folder())
    counts = {"files": 0, "both refuse": 0, "gemmi": 0, "gemmi+backbone": 0, "ff names": 0, "gflow refuses": 0}
    shown = 0
    start = time.perf_counter()
    for path in files:
        try:
            raw, ref = gemmi_sequence(path, backbone=False), gemmi_sequence(path, backbone=True)
        except Exception:  # noqa: BLE001 - gemmi cannot read it: compare only that gflow refuses it too
            raw = ref = None
        try:
            ours: str | None = Structure.from_file(path).sequence()
            error = ""
        except Exception as exc:  # noqa: BLE001 - any refusal is reported
            ours, error = None, str(exc).replace("\n", " ")[:150]
        if ours is None and ref is None:
            counts["both refuse"] += 1
            continue
        counts["files"] += 1
        counts["gemmi"] += ours == raw
        if ours is None:
            counts["gflow refuses"] += 1
        if ours == ref:
            counts["gemmi+backbone"] += 1
        elif ours is not None and ref is not None and _ff_only(ours, ref):
            counts["ff names"] += 1
        elif shown < args.show:
            shown += 1
            what = error or f"gflow {len(ours or '')}: {(ours or '')[:50]!r} vs gemmi+backbone {len(ref or '')}: " \
                            f"{(ref or '')[:50]!r}"
            print(f"differs: {path.name}: {what}")
    seconds = time.perf_counter() - start
    print(f"{counts['files']} files read by gemmi or gflow ({counts['both refuse']} more refused by both), "
          f"{seconds:.1f} s")
    print(f"gflow agrees with gemmi as is: {counts['gemmi']}; with gemmi+backbone: {counts['gemmi+backbone']}; "
          f"differs only where gflow reads a force-field name gemmi calls X: {counts['ff names']}; "
          f"refused by gflow only: {counts['gflow refuses']}")


if __name__ == "__main__":
    main()
