"""Structure parsing: chains + atom count + every chain's sequence of a ~47k-atom PDB, gflow vs gemmi alone.

The file is made from a real entry (5CVZ, 1,061 atom records, from gemmi's test data in
tests/resources/objects/real/): its atom records copied 45 times as chains A-Z, a-z, 0-9 (shifted
50 A apart), so every record is a real one and the file has 47,745 atoms in 45 chains. Both sides
start from the text in memory. gflow = ``Structure(text=...)`` (parse + checks) then ``chains``,
``num_atoms``, ``sequences()``; gemmi alone = ``read_pdb_string`` + the same three from gemmi.

    python benchmarks/bench_structure.py --reps 7
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import gemmi
from _common import median_time, table

from gflow.objects import Structure

SOURCE = Path(__file__).resolve().parent.parent / "tests" / "resources" / "objects" / "real" / "5cvz_final.pdb"
CHAINS = string.ascii_uppercase + string.ascii_lowercase + string.digits


def big_pdb(copies: int = 45) -> str:
    """A multi-chain PDB text built from the real entry's atom records (see the module docstring)."""
    records = [ln for ln in SOURCE.read_text().splitlines() if ln.startswith(("ATOM  ", "HETATM"))]
    out: list[str] = []
    serial = 1
    for k in range(copies):
        chain = CHAINS[k]
        for line in records:
            x = float(line[30:38]) + 50.0 * (k % 8)
            y = float(line[38:46]) + 50.0 * (k // 8)
            out.append(f"{line[:6]}{serial % 100000:5d}{line[11:21]}{chain}{line[22:30]}{x:8.3f}{y:8.3f}{line[46:]}")
            serial += 1
        out.append(f"TER   {serial % 100000:5d}      {records[-1][17:20]} {chain}{records[-1][22:26]}")
        serial += 1
    out.append("END")
    return "\n".join(out) + "\n"


def with_gemmi(text: str) -> tuple[int, int, dict[str, str]]:
    st = gemmi.read_pdb_string(text)
    st.setup_entities()
    model = st[0]
    chains = list(dict.fromkeys(ch.name for ch in model))
    seqs: dict[str, str] = {}
    for ch in model:
        poly = ch.get_polymer()
        seqs[ch.name] = gemmi.one_letter_code([r.name for r in poly.first_conformer()])
    return len(chains), model.count_atom_sites(), seqs


def with_gflow(text: str) -> tuple[int, int, dict[str, str]]:
    s = Structure(text=text)
    return len(s.chains), s.num_atoms, s.sequences()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    text = big_pdb()
    g = with_gemmi(text)
    f = with_gflow(text)
    assert g[0] == f[0] and g[1] == f[1], (g[:2], f[:2])
    assert all(len(g[2][c]) == len(f[2][c]) for c in f[2]), "sequence lengths differ"
    t_gemmi, _ = median_time(lambda: with_gemmi(text), args.reps)
    t_gflow, _ = median_time(lambda: with_gflow(text), args.reps)
    rows = [{"case": f"{f[1]:,} atoms, {f[0]} chains", "gemmi alone ms": f"{t_gemmi * 1e3:.1f}",
             "gflow Structure ms": f"{t_gflow * 1e3:.1f}", "ratio": f"{t_gflow / t_gemmi:.2f}x"}]
    print(table(rows, list(rows[0])))
    print(json.dumps({"atoms": f[1], "chains": f[0], "gemmi_s": t_gemmi, "gflow_s": t_gflow,
                      "ratio": t_gflow / t_gemmi}))


if __name__ == "__main__":
    main()
