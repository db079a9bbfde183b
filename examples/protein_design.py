"""A small design loop: mutate a parent protein, score every variant, keep the best.

Runs on the CPU in seconds on gflow's embedded defaults (local threads, SQLite state, a local
artifact folder under ~/.gflow or $GFLOW_HOME):

    gflow run examples/protein_design.py:design --param rounds=2
    python examples/protein_design.py

The scorer is a deterministic stand-in (hydrophobic-moment and charge terms over a sliding
window); the ESM-2 scorer in examples/esm_scoring.py drops in with the same signature.
"""

from __future__ import annotations

import random

import gflow
from gflow.objects import Design, Protein, Provenance, Score

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# Kyte-Doolittle hydropathy
KD = {"A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5, "G": -0.4, "H": -3.2,
      "I": 4.5, "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8, "P": -1.6, "S": -0.8, "T": -0.7, "W": -0.9,
      "Y": -1.3, "V": 4.2, "X": 0.0, "U": 0.0, "O": 0.0, "B": -3.5, "Z": -3.5}
CHARGE = {"K": 1.0, "R": 1.0, "H": 0.1, "D": -1.0, "E": -1.0}
PARENT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSAEGLNGAKVIQ"


@gflow.task(cache=True, retries=1)
def mutate(parent: Protein, n: int, seed: int = 0) -> list[Protein]:
    """``n`` distinct point mutants of ``parent`` (deterministic for a given seed)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    variants: list[Protein] = []
    while len(variants) < n:
        pos = rng.randrange(len(parent))
        wt = parent.sequence[pos]
        mt = rng.choice([a for a in AMINO_ACIDS if a != wt])
        code = f"{wt}{pos + 1}{mt}"
        if code in seen or wt not in AMINO_ACIDS:
            continue
        seen.add(code)
        variants.append(parent.mutate(code))
    return variants


@gflow.task(cache=True, resources=gflow.Resources(cpu=1, memory="256Mi"))
def score(protein: Protein) -> Score:
    """A deterministic developability proxy: solubility (low hydropathy) and near-neutral charge."""
    seq = protein.sequence
    window = 9
    hydro = [sum(KD[a] for a in seq[i:i + window]) / window for i in range(len(seq) - window + 1)]
    patches = sum(1 for h in hydro if h > 1.6)  # aggregation-prone hydrophobic patches
    net_charge = sum(CHARGE.get(a, 0.0) for a in seq)
    value = -patches - 0.1 * abs(net_charge)
    return Score(name="developability", value=round(value, 6), units="a.u.",
                 provenance={"model": "kd-window-9", "protein": protein.name or ""})


@gflow.task
def rank(proteins: list[Protein], scores: list[Score], top: int) -> list[Design]:
    """The ``top`` proteins by score, as Designs that remember where they came from."""
    if len(proteins) != len(scores):
        raise ValueError(f"{len(proteins)} proteins but {len(scores)} scores")
    order = sorted(range(len(proteins)), key=lambda i: (-scores[i].value, proteins[i].sequence))
    return [Design(protein=proteins[i], scores=(scores[i],),
                   produced_by=Provenance(task="examples.protein_design:rank")) for i in order[:top]]


@gflow.flow
def design(parent: Protein = Protein(sequence=PARENT, name="parent"), variants: int = 48, top: int = 5,
           rounds: int = 2, seed: int = 7) -> list[Design]:
    """Mutate -> score -> rank, for ``rounds`` rounds, seeding each round with the previous best."""
    best = [Design(protein=parent)]
    for r in range(rounds):
        pool = mutate(best[0].protein, n=variants, seed=seed + r)  # a future of a list
        scores = score.map(pool)  # fans out as soon as the pool is known, one batch
        best = rank(pool, scores, top=top).result()  # the next round needs the value
    return best


if __name__ == "__main__":
    for d in design():
        s = d.scores[0]
        print(f"{d.protein.name:<40} {s.name}={s.value:+.2f}")
