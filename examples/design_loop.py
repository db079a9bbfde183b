"""A multi-stage, multi-image design loop: generate -> ESM-2 score -> RDKit filters -> rank, for several rounds.

    gflow run examples/design_loop.py:design_loop --param parent=NLYIQWLKDGGPSSGRPPPS \\
        --param model=/path/to/esm2_folder --param rounds=3 --param per_round=32
    gflow build examples/design_loop.py:design_loop     # one image per stage

Each round proposes point mutants of the last round's elite (round 1: of the parent), scores them
with ESM-2 (``esm_scoring.score_batch``, the torch image), runs physicochemical and developability
filters with RDKit on each variant's peptide SMILES (``developability``, the RDKit image), and ranks
(``rank_round``, the plain image): variants that pass the filters, best PLL per residue first. Every
design records its parent's content id, so lineage runs from each final design back to the parent
(``Experiment.ancestors``); the engine also records which task run produced each object from which
inputs. The flow returns an ``Experiment`` holding every design of every round, with a summary
table in its metadata, and saves a plot of score by round as PNG (``summary_png``, matplotlib).

``model`` defaults to ``$GFLOW_ESM_MODEL`` or the ESM-2 8M hub id (read from the local cache only).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from esm_scoring import score_batch
from pydantic import Field

import gflow
from gflow.models import resolve_model
from gflow.objects import Design, Experiment, GflowObject, Molecule, Protein, Score
from gflow.objects.molecule import Descriptors

CHEM_IMAGE = gflow.Image(packages=["rdkit"])
"""The filter stage's image: RDKit only."""
PLOT_IMAGE = gflow.Image(packages=["matplotlib"])
"""The summary stage's image."""
DEFAULT_MODEL = "facebook/esm2_t6_8M_UR50D"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
BATCH = 32
LIABILITIES = {  # sequence motifs that make a protein hard to develop
    "N-glycosylation": re.compile(r"N[^P][ST]"),
    "deamidation": re.compile(r"N[GS]"),
    "isomerization": re.compile(r"D[GSD]"),
}


class FilterResult(GflowObject):
    """The filter stage's verdict on one protein.

    Attributes:
        passed: Whether it passed every filter.
        reasons: The filters it failed.
        molecule: The protein's peptide as a Molecule (canonical SMILES).
        descriptors: RDKit descriptors of that molecule.
    """

    passed: bool
    reasons: tuple[str, ...] = ()
    molecule: Molecule
    descriptors: Descriptors


class RoundRow(GflowObject):
    """One row of the run summary."""

    round: int = Field(ge=0)
    designs: int
    passed: int
    #: PLL per residue of the round's top elite design: the best design that passed the filters (the best
    #: overall only when none passed)
    elite_top: float
    #: the best PLL per residue of any design of the round, passing or not
    max_pll: float
    mean_pll: float
    elite: tuple[str, ...] = ()


@gflow.task(cache=True)
def propose(parents: list[Design], n: int, seed: int) -> list[Design]:
    """``n`` distinct point mutants spread over ``parents``, each derived from (and linked to) its parent."""
    rng = random.Random(seed)
    seen = {d.protein.sequence for d in parents}
    out: list[Design] = []
    attempts = 0
    while len(out) < n and attempts < 100 * n:
        attempts += 1
        parent = parents[len(out) % len(parents)]
        seq = parent.protein.sequence
        pos = rng.randrange(len(seq))
        if seq[pos] not in AMINO_ACIDS:
            continue
        mutation = f"{seq[pos]}{pos + 1}{rng.choice([a for a in AMINO_ACIDS if a != seq[pos]])}"
        child = parent.protein.mutate(mutation)
        if child.sequence in seen:
            continue
        seen.add(child.sequence)
        out.append(parent.derive(protein=child, molecule=None, structure=None))
    return out


@gflow.task(image=CHEM_IMAGE, cache=True, resources=gflow.Resources(cpu=1, memory="1Gi"))
def developability(proteins: list[Protein]) -> list[FilterResult]:
    """Physicochemical filters (RDKit descriptors of the peptide) and sequence liabilities."""
    from rdkit import Chem

    results = []
    for protein in proteins:
        mol = Chem.MolFromSequence(protein.sequence)
        if mol is None:
            raise ValueError(f"RDKit cannot build a peptide from {protein.name or protein.sequence!r}")
        molecule = Molecule(smiles=Chem.MolToSmiles(mol), name=protein.name)
        d = molecule.descriptors()
        reasons = [name for name, motif in LIABILITIES.items() if motif.search(protein.sequence)]
        per_residue_tpsa = d.tpsa / len(protein)
        if d.logp / len(protein) > 0.05:
            reasons.append("hydrophobic (logP per residue > 0.05)")
        if per_residue_tpsa < 25.0:
            reasons.append("low polarity (TPSA per residue < 25)")
        if abs(d.formal_charge) > 0:
            reasons.append("charged peptide SMILES")
        if protein.sequence.count("C") % 2:
            reasons.append("unpaired cysteine")
        results.append(FilterResult(passed=not reasons, reasons=tuple(reasons), molecule=molecule, descriptors=d))
    return results


@gflow.task
def rank_round(designs: list[Design], scored: list[tuple[list[Score], list[object]]],
               filters: list[FilterResult]) -> list[Design]:
    """Every design with its scores and peptide attached, passing ones first, best PLL per residue first."""
    scores = [s for batch, _ in scored for s in batch]
    if not len(designs) == len(scores) == len(filters):
        raise ValueError(f"{len(designs)} designs, {len(scores)} scores, {len(filters)} filter results")
    out = []
    for design, score, verdict in zip(designs, scores, filters, strict=True):
        per_residue = Score(name="esm2_pll_per_residue", value=float(score.provenance["pll_per_residue"]),
                            units="nats", provenance={"model": score.provenance["model"]})
        passed = Score(name="passed_filters", value=1.0 if verdict.passed else 0.0)
        tpsa = Score(name="tpsa", value=round(verdict.descriptors.tpsa, 3), units="A^2")
        out.append(design.with_(molecule=verdict.molecule, scores=(*design.scores, score, per_residue, passed, tpsa)))

    def key(d: Design) -> tuple[float, float, str]:
        return (-_value(d, "passed_filters"), -_value(d, "esm2_pll_per_residue"), d.protein.sequence)

    return sorted(out, key=key)


def _value(design: Design, name: str) -> float:
    score = design.score(name)
    return score.value if score is not None else float("-inf")


@gflow.task(image=PLOT_IMAGE)
def summary_png(rows: list[RoundRow], points: list[tuple[int, float]], title: str) -> bytes:
    """A PNG of every design's PLL per residue by round, the elite's best marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter([r for r, _ in points], [v for _, v in points], s=12, alpha=0.6, label="designs")
    ax.plot([r.round for r in rows], [r.elite_top for r in rows], "o-", color="C3", label="top elite (best passing)")
    ax.set_xticks(sorted({r.round for r in rows}))
    ax.set_xlabel("round")
    ax.set_ylabel("ESM-2 PLL per residue (nats)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _batches(items: list[Protein]) -> list[list[Protein]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


@gflow.flow
def design_loop(parent: Protein, rounds: int = 3, per_round: int = 32, model: str | None = None, elite: int = 4,
                seed: int = 0, out_dir: str | None = None) -> Experiment:
    """``rounds`` rounds of generate -> score -> filter -> rank, each seeded by the last round's elite."""
    if rounds < 1 or per_round < 1 or elite < 1:
        raise ValueError(f"rounds, per_round and elite must be at least 1 (got {rounds}, {per_round}, {elite})")
    model_obj = resolve_model(model or os.environ.get("GFLOW_ESM_MODEL") or DEFAULT_MODEL)
    root = Design(protein=parent if parent.name else parent.with_(name="parent"))
    everything: list[Design] = [root]
    rows: list[RoundRow] = []
    points: list[tuple[int, float]] = []
    parents = [root]
    for r in range(1, rounds + 1):
        variants = propose(parents, n=per_round, seed=seed * 1000 + r).result()
        proteins = [d.protein for d in variants]
        scored = score_batch.map(_batches(proteins), model=model_obj)  # the torch image
        filters = developability.map(_batches(proteins))  # the RDKit image, concurrently
        flat_filters = gather(filters)
        ranked = rank_round(variants, scored, flat_filters).result()
        parents = ranked[:elite]  # passing designs first (rank_round's order), so failing ones only fill up
        everything.extend(ranked)
        values = [_value(d, "esm2_pll_per_residue") for d in ranked]
        points.extend((r, v) for v in values)
        rows.append(RoundRow(round=r, designs=len(ranked), passed=sum(_value(d, "passed_filters") > 0 for d in ranked),
                             elite_top=_value(parents[0], "esm2_pll_per_residue"), max_pll=max(values),
                             mean_pll=round(sum(values) / len(values), 6),
                             elite=tuple(d.content_id for d in parents)))
    png = summary_png(rows, points, title=f"design loop from {root.protein.name} ({model_obj.name})").result()
    png_path = _save_png(png, out_dir)
    measurements = tuple(Score(name=f"round{row.round}_elite_top", value=row.elite_top, units="nats") for row in rows)
    table = "\n".join(f"{row.round}\t{row.designs}\t{row.passed}\t{row.elite_top:.4f}\t{row.max_pll:.4f}\t"
                      f"{row.mean_pll:.4f}" for row in rows)
    return Experiment(name=f"design_loop:{root.protein.name}", designs=tuple(everything), measurements=measurements,
                      description="round\tdesigns\tpassed\telite_top_pll\tmax_pll\tmean_pll\n" + table,
                      metadata={"summary_png": str(png_path), "model": model_obj.source, "rounds": rounds,
                                "final_elite": ",".join(d.content_id for d in parents)})


@gflow.task
def gather(lists: list[list[FilterResult]]) -> list[FilterResult]:
    """Flattens the filter stage's batches into one list, in order."""
    return [item for batch in lists for item in batch]


def _save_png(png: bytes, out_dir: str | None) -> Path:
    from gflow._context import current_flow
    from gflow.config import gflow_home

    run = current_flow.get()
    folder = Path(out_dir) if out_dir else gflow_home() / "reports" / (run.id if run is not None else "local")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "design_loop_scores.png"
    path.write_bytes(png)
    return path


def final_designs(experiment: Experiment) -> list[Design]:
    """The last round's elite, best first."""
    ids = str(experiment.metadata.get("final_elite", "")).split(",")
    return [d for i in ids if (d := experiment.design(i)) is not None]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parent", nargs="?", default="NLYIQWLKDGGPSSGRPPPS")
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=32)
    args = parser.parse_args()
    exp = design_loop(Protein(sequence=args.parent, name="parent"), rounds=args.rounds, per_round=args.per_round,
                      model=args.model)
    print(exp.description)
    print("plot:", exp.metadata["summary_png"])
    for d in final_designs(exp):
        print(d.protein.name, f"{_value(d, 'esm2_pll_per_residue'):.4f}", len(exp.ancestors(d.content_id)), "ancestors")
