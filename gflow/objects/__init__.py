"""Protein-experiment objects: frozen, validated, content-addressed pydantic models."""

from ._base import GflowObject
from .design import Design, Experiment, Provenance
from .molecule import Molecule
from .protein import Mutation, Protein
from .score import Score
from .structure import Structure

__all__ = [
    "Design",
    "Experiment",
    "GflowObject",
    "Molecule",
    "Mutation",
    "Protein",
    "Provenance",
    "Score",
    "Structure",
]
