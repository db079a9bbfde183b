"""Protein-experiment objects: frozen, validated, content-addressed pydantic models.

Field libraries are optional extras, imported on first use: RDKit (``chem``) for ``Molecule``'s
canonical form and descriptors, gemmi (``structure``) for ``Structure``. Helpers live in the
submodules: ``gflow.objects.fasta`` (read_fasta, write_fasta), ``gflow.objects.molecule``
(Descriptors, canonical_smiles), ``gflow.objects.model`` (FileEntry), ``gflow.objects._deps`` (MissingExtra).
"""

from ._base import GflowObject
from .design import Design, Experiment, Provenance
from .model import Dataset, Model
from .molecule import Molecule
from .protein import Mutation, Protein
from .score import Score
from .structure import Structure

__all__ = [
    "Dataset",
    "Design",
    "Experiment",
    "GflowObject",
    "Model",
    "Molecule",
    "Mutation",
    "Protein",
    "Provenance",
    "Score",
    "Structure",
]
