"""Base class for gflow's domain objects: frozen, validated, content-addressed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Self, TypeAlias

from pydantic import AllowInfNan, BaseModel, ConfigDict

FiniteFloat: TypeAlias = Annotated[float, AllowInfNan(False)]
"""A float that rejects NaN and +/-inf (they have no canonical JSON form)."""

MetadataValue: TypeAlias = bool | int | FiniteFloat | str
Metadata: TypeAlias = dict[str, MetadataValue]
"""Free-form, JSON-safe annotations. Treat as read-only: the object is frozen, the dict is not."""

CONTENT_ID_PATTERN = r"^sha256:[0-9a-f]{64}$"


def canonical_json(data: Any) -> str:
    """Serializes JSON-compatible data canonically (sorted keys, no spaces, UTF-8, no NaN).

    Args:
        data: JSON-compatible data, e.g. the result of ``model_dump(mode="json")``.

    Returns:
        The canonical JSON text.
    """
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def shorten(text: str, width: int = 40) -> str:
    """``text`` whole when it fits in ``width`` characters, else its start and its last 8 around ``...``."""
    if len(text) <= width:
        return text
    return f"{text[: max(width - 11, 1)]}...{text[-8:]}"


def number(value: float) -> str:
    """A float for people: six significant digits, no exponent below a million."""
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.4e}"


def _field_text(value: Any) -> str:
    if isinstance(value, GflowObject):
        return shorten(value.summary(), 40)
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"({len(value)} items)"
    return shorten(str(value), 40)


class GflowObject(BaseModel):
    """Base of all gflow objects: frozen, strict about unknown fields, content-addressed.

    Equality and hashing follow ``content_id``: two objects of the same class are equal exactly
    when their canonical JSON is equal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical_json(self) -> str:
        """Returns the canonical JSON text of this object (what ``content_id`` hashes)."""
        return canonical_json(self.model_dump(mode="json"))

    @cached_property
    def content_id(self) -> str:
        """``"sha256:<hex>"`` of the canonical JSON; computed once per instance."""
        digest = hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()
        return f"sha256:{digest}"

    def registry_key(self) -> str | None:
        """A key that finds this object across runs whatever its name or metadata (a molecule's canonical
        SMILES); recorded with the task runs that read or produced it, as ``key:<kind>:<key>`` beside the
        content id. None: found by content id only."""
        return None

    def summary(self) -> str:
        """A short text for people (``gflow run --output short``, tables); subclasses say what matters about them:
        sequences, SMILES, score values, file paths. One line, except an Experiment's table.

        This default (for subclasses of users' own) names the first five fields that are set: numbers and text
        shortened, nested objects by their own summary, collections by their length.
        """
        parts: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or (isinstance(value, (tuple, list, dict, set, frozenset)) and not value):
                continue
            parts.append(f"{name}={_field_text(value)}")
            if len(parts) == 5:
                break
        return " ".join([type(self).__name__, ", ".join(parts)]) if parts else type(self).__name__

    def with_(self, **changes: Any) -> Self:
        """Returns a copy with ``changes`` applied, validated like a freshly built object.

        Args:
            **changes: Field values to replace.

        Returns:
            A new instance of the same class.

        Raises:
            pydantic.ValidationError: If a change is invalid or names an unknown field.
        """
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        return type(self).model_validate(data)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Pydantic's unvalidated copy, minus cached values that ``update`` may have made stale.

        Prefer ``with_``, which validates.
        """
        copied = super().model_copy(update=update, deep=deep)
        if update:
            fields = type(self).model_fields
            for key in [k for k in copied.__dict__ if k not in fields]:
                del copied.__dict__[key]
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GflowObject):
            return NotImplemented
        return type(self) is type(other) and self.content_id == other.content_id

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, self.content_id))
