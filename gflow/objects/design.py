"""Designs, their provenance and lineage, and experiments that collect them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Self

from pydantic import Field, StringConstraints, field_validator

from ._base import CONTENT_ID_PATTERN, GflowObject, Metadata, number, shorten
from .molecule import Molecule
from .protein import Protein
from .score import Score
from .structure import Structure

_PATH_KEYS = ("_png", "_path", "_file", "_dir", "_pdf", "_csv", "_html")
ContentId = Annotated[str, StringConstraints(pattern=CONTENT_ID_PATTERN)]
"""``"sha256:"`` followed by 64 lowercase hex digits."""


class Provenance(GflowObject):
    """Which task call produced an object.

    Attributes:
        task: The task's import path, e.g. ``"examples.design:mutate"``.
        run_id: The flow run.
        task_run_id: The task run within it.
        inputs: Content ids of the call's inputs.
    """

    task: str = Field(min_length=1)
    run_id: str | None = None
    task_run_id: str | None = None
    inputs: tuple[ContentId, ...] = ()

    def summary(self) -> str:
        run = f" in run {self.run_id}" if self.run_id else ""
        return f"Provenance {self.task}{run}"


def _unique_score_names(scores: tuple[Score, ...]) -> tuple[Score, ...]:
    seen: set[str] = set()
    for score in scores:
        if score.name in seen:
            raise ValueError(f"duplicate score name {score.name!r}")
        seen.add(score.name)
    return scores


class Design(GflowObject):
    """A candidate: a protein, optionally with a structure and a bound molecule, plus its scores.

    Attributes:
        protein: The designed protein (a bare sequence string is accepted).
        structure: Optional predicted or solved structure.
        molecule: Optional ligand or binder partner.
        scores: Scores with distinct names.
        parents: Content ids of what this design was derived from.
        produced_by: The task call that produced it.
    """

    protein: Protein
    structure: Structure | None = None
    molecule: Molecule | None = None
    scores: tuple[Score, ...] = ()
    parents: tuple[ContentId, ...] = ()
    produced_by: Provenance | None = None
    def summary(self) -> str:
        """``Design parent_K2E: MKTAYIAK...(22 aa); esm2_pll=-1.2345; molecule CCO; structure 4ake``."""
        parts = [f"Design {self.protein.summary().removeprefix('Protein ')}"]
        parts += [f"{s.name}={number(s.value)}" for s in self.scores]
        if self.molecule is not None:
            parts.append(f"molecule {shorten(self.molecule.smiles)}")
        if self.structure is not None:
            parts.append(f"structure {self.structure.name or self.structure.format}")
        return "; ".join(parts)

    @field_validator("scores")
    @classmethod
    def _distinct_scores(cls, scores: tuple[Score, ...]) -> tuple[Score, ...]:
        return _unique_score_names(scores)

    def score(self, name: str) -> Score | None:
        """Returns the score called ``name``, or None."""
        return next((s for s in self.scores if s.name == name), None)

    def with_score(self, score: Score) -> Self:
        """Returns a copy with ``score`` added, replacing any score of the same name."""
        kept = tuple(s for s in self.scores if s.name != score.name)
        return self.with_(scores=(*kept, score))

    def derive(self, **changes: object) -> Self:
        """Returns a child design: ``changes`` applied, scores cleared, this design as its parent.

        Args:
            **changes: Field values for the child, e.g. ``protein=...``; may override ``scores``.
        """
        base: dict[str, object] = {"scores": (), "parents": (self.content_id,), "produced_by": None}
        return self.with_(**{**base, **changes})


class Experiment(GflowObject):
    """A named collection of designs and experiment-level measurements.

    Attributes:
        name: The experiment's name.
        designs: The designs, in order.
        measurements: Scores that belong to the experiment as a whole.
        description: Free text.
        metadata: JSON-safe annotations.
    """

    name: str = Field(min_length=1)
    designs: tuple[Design, ...] = ()
    measurements: tuple[Score, ...] = ()
    description: str | None = None
    metadata: Metadata = Field(default_factory=dict)

    def summary(self) -> str:
        """The name and counts, the measurements, the description (a summary table, at most 20 lines) and the
        metadata that name files (keys ending in ``_png``, ``_path``, ``_file``, ``_dir``, or absolute paths)."""
        lines = [f"Experiment {self.name}: {len(self.designs)} designs, {len(self.measurements)} measurements"]
        if self.measurements:
            lines.append("  " + ", ".join(f"{s.name}={number(s.value)}" for s in self.measurements[:8])
                         + (f", ... {len(self.measurements) - 8} more" if len(self.measurements) > 8 else ""))
        if self.description:
            described = self.description.splitlines()
            lines += ["  " + line for line in described[:20]]
            if len(described) > 20:
                lines.append(f"  ... {len(described) - 20} more lines")
        lines += [f"  {key}: {value}" for key, value in self.metadata.items()
                  if isinstance(value, str) and (key.endswith(_PATH_KEYS) or value.startswith("/"))]
        return "\n".join(lines)

    def with_designs(self, designs: Iterable[Design]) -> Self:
        """Returns a copy with ``designs`` appended."""
        return self.with_(designs=(*self.designs, *designs))

    def design(self, content_id: str) -> Design | None:
        """Returns the design with this content id, or None."""
        return next((d for d in self.designs if d.content_id == content_id), None)

    def lineage(self) -> dict[str, tuple[str, ...]]:
        """Maps each design's content id to its parents' content ids, in design order."""
        return {design.content_id: design.parents for design in self.designs}

    def ancestors(self, content_id: str) -> list[str]:
        """Content ids of every ancestor of a design, nearest first (parents before grandparents).

        Ancestors outside the experiment are listed but not followed further.
        """
        lineage = self.lineage()
        found: list[str] = []
        frontier = list(lineage.get(content_id, ()))
        while frontier:
            next_frontier: list[str] = []
            for parent in frontier:
                if parent not in found and parent != content_id:
                    found.append(parent)
                    next_frontier.extend(lineage.get(parent, ()))
            frontier = next_frontier
        return found

    def ranked(self, score_name: str, top: int | None = None) -> tuple[Design, ...]:
        """Designs that carry ``score_name``, best first; ties keep design order.

        Args:
            score_name: The score to rank by; its ``higher_is_better`` sets the direction.
            top: Keep only the best ``top`` designs.

        Returns:
            The ranked designs.

        Raises:
            ValueError: If ``top`` is negative or designs disagree on the score's direction.
        """
        if top is not None and top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        scored = [(d, s) for d in self.designs if (s := d.score(score_name)) is not None]
        directions = {s.higher_is_better for _, s in scored}
        if len(directions) > 1:
            raise ValueError(f"designs disagree on whether a higher {score_name!r} is better")
        higher_is_better = directions.pop() if directions else True
        scored.sort(key=lambda pair: -pair[1].value if higher_is_better else pair[1].value)
        ranked = tuple(d for d, _ in scored)
        return ranked if top is None else ranked[:top]
