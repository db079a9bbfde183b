"""A flow whose results are objects people look at: a molecule, a mutated design, a structure, a table."""

from __future__ import annotations

from pathlib import Path

import gflow
from gflow.objects import Design, Molecule, Protein, Score, Structure

PDB = Path(__file__).parent / "objects" / "real" / "4hhh_frag.pdb"


@gflow.task
def make_molecule() -> Molecule:
    return Molecule(smiles="CC(=O)Oc1ccccc1C(=O)O", name="aspirin")


@gflow.task
def make_design(sequence: str) -> Design:
    parent = Design(protein=Protein(sequence=sequence, name="wt"))
    child = parent.protein.mutate("K2R", "Y5W")
    return parent.derive(protein=child, scores=(Score(name="stability", value=-1.25, units="kcal/mol"),))


@gflow.task
def make_structure() -> Structure:
    return Structure(text=PDB.read_text(), format="pdb", name="4hhh fragment")


@gflow.task
def make_table() -> list[dict]:
    return [{"design": "wt", "score": 1.5}, {"design": "K2R", "score": 2.25}, {"design": "Y5W", "score": -0.5}]


@gflow.flow
def showcase(sequence: str = "MKTAYIAKQR") -> list:
    return [make_molecule(), make_design(sequence), make_structure(), make_table()]
