"""Scores: named numbers with units, direction and provenance."""

from __future__ import annotations

from pydantic import Field

from ._base import FiniteFloat, GflowObject, number


class Score(GflowObject):
    """A named, finite number, e.g. a model's fitness estimate or a measured Kd.

    Attributes:
        name: What was scored, e.g. ``"esm2_pll"``.
        value: The number; NaN and infinities are rejected.
        units: Optional units, e.g. ``"nM"``.
        higher_is_better: Direction used when ranking.
        provenance: Where it came from, e.g. ``{"model": "esm2_t6_8M", "task_run": "..."}``.
    """

    name: str = Field(min_length=1)
    value: FiniteFloat
    units: str | None = None
    higher_is_better: bool = True
    provenance: dict[str, str] = Field(default_factory=dict)

    def summary(self) -> str:
        """``Score esm2_pll=-12.3457 nats`` (``, lower is better`` where it is)."""
        units = f" {self.units}" if self.units else ""
        direction = "" if self.higher_is_better else ", lower is better"
        return f"Score {self.name}={number(self.value)}{units}{direction}"

    def is_better_than(self, other: Score) -> bool:
        """Whether this score beats ``other`` in this score's direction (ties are not better)."""
        return self.value > other.value if self.higher_is_better else self.value < other.value
