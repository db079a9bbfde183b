"""Task options: defined once, used by the decorator, ``with_options``, the engine and the worker."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MEM_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
              "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$")


def parse_memory(value: int | str | None) -> int | None:
    """Parse ``"2Gi"``, ``"512M"``, ``"1.5GB"`` or a byte count into bytes."""
    if value is None or isinstance(value, int):
        return value
    m = _MEM_RE.match(str(value))
    if not m:
        raise ValueError(f"memory {value!r} is not a size like '512Mi', '2Gi' or a byte count")
    return int(float(m.group(1)) * _MEM_UNITS[(m.group(2) or "").lower()])


class Resources(BaseModel):
    """What one call of a task needs: CPUs, memory (bytes or '2Gi'), GPUs, gang scheduling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = Field(default=1, gt=0)
    memory: int | None = None
    gpu: int = Field(default=0, ge=0)
    #: all pods of one call start together or not at all (Volcano gang scheduling, for multi-pod work)
    gang: bool = False

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int | None:
        return parse_memory(v)


class Retry(BaseModel):
    """Retry policy: ``count`` extra attempts, exponential backoff, only on ``on`` exceptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    count: int = Field(default=0, ge=0)
    backoff: float = Field(default=0.0, ge=0, description="seconds before the first retry")
    factor: float = Field(default=2.0, ge=1, description="multiplier per further retry")
    max_backoff: float = Field(default=300.0, ge=0)
    on: tuple[type[BaseException], ...] = (Exception,)

    @field_validator("on", mode="before")
    @classmethod
    def _on(cls, v: Any) -> Any:
        if isinstance(v, type):
            return (v,)
        return tuple(v)

    def __init__(self, count: int = 0, backoff: float = 0.0, factor: float = 2.0, max_backoff: float = 300.0,
                 **options: Any) -> None:
        """``Retry(3)``, ``Retry(3, 5.0)``: the count (and the backoff, factor, cap) may be given positionally,
        as the README writes them; everything else by keyword."""
        super().__init__(count=count, backoff=backoff, factor=factor, max_backoff=max_backoff, **options)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return min(self.max_backoff, self.backoff * self.factor ** (attempt - 1))

    def should_retry(self, attempt: int, error_type: type[BaseException] | None) -> bool:
        if attempt > self.count:
            return False
        if error_type is None:  # remote errors carry only a name: retry unless restricted
            return self.on == (Exception,)
        return issubclass(error_type, self.on)


class TaskOptions(BaseModel):
    """Every option a task has. ``None`` means 'not set' (take the default or the flow's)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str | None = None
    version: str | None = None
    retries: Retry = Retry()
    timeout: float | None = Field(default=None, gt=0, description="seconds per attempt")
    cache: bool = False
    resources: Resources = Resources()
    image: Any = None
    max_concurrency: int | None = Field(default=None, ge=1)
    pickle: bool = False
    tags: tuple[str, ...] = ()
    #: run this task's calls on another executor than the flow's (a URL such as ``dask://host:8786``)
    executor: Any = None
    #: run this many elements of a map one after another in one job / array child / pod (sharing
    #: ``@gflow.warm`` values); None lets the executor pick (1, or what fits its array limit)
    per_job: int | None = None
    #: the function is vectorized: its batched parameters receive lists of up to this many elements
    batch_size: int | None = None
    #: the parameters that receive lists when ``batch_size`` is set (default: the first parameter)
    batched: tuple[str, ...] | None = None

    @field_validator("per_job", "batch_size", mode="before")
    @classmethod
    def _at_least_one(cls, v: Any, info: Any) -> Any:
        if v is not None and (type(v) is not int or v < 1):
            raise ValueError(f"{info.field_name} must be an integer of at least 1, got {v!r}")
        return v

    @field_validator("batched", mode="before")
    @classmethod
    def _batched(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return Retry(count=v)
        return v

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, v: Any) -> Any:
        return Resources() if v is None else v

    def merged(self, **changes: Any) -> TaskOptions:
        """A copy with ``changes`` applied and validated."""
        data = {k: getattr(self, k) for k in type(self).model_fields}
        if "retry_backoff" in changes or "retry_on" in changes:
            base = changes.get("retries", data["retries"])
            base = Retry(count=base) if isinstance(base, int) else base
            extra = {}
            if "retry_backoff" in changes:
                extra["backoff"] = changes.pop("retry_backoff")
            if "retry_on" in changes:
                extra["on"] = changes.pop("retry_on")
            changes["retries"] = Retry(**{**base.model_dump(), **extra})
        data.update(changes)
        return TaskOptions(**data)
