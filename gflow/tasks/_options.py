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


def format_memory(n: int) -> str:
    """``134217728`` -> ``128Mi`` (the largest binary unit that divides it), else bytes."""
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


class Resources(BaseModel):
    """What one call of a task needs: CPUs, memory (bytes or '2Gi'), GPUs, gang scheduling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = Field(default=1, gt=0)
    memory: int | None = None
    gpu: int = Field(default=0, ge=0)
    #: all pods of one call start together or not at all (Volcano gang scheduling, for multi-pod work)
    gang: bool = False
    #: run on reclaimable capacity (spot / preemptible) where the backend has it; refused where it has none
    spot: bool = False

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
    #: after an out-of-memory failure the next attempt asks for memory x this (> 1); None: the same memory
    memory_factor: float | None = None
    #: the most memory an escalated attempt asks for (bytes or '64Gi')
    max_memory: int | None = None
    #: retry a failure with an exit code only when it is one of these (None: any exit code)
    on_exit_codes: tuple[int, ...] | None = None
    #: spot reclaims (``Preempted``) retried on spot before the next attempt runs on demand; not counted in ``count``
    spot: int = 0

    @field_validator("memory_factor")
    @classmethod
    def _memory_factor(cls, v: Any) -> Any:
        if v is not None and not v > 1:
            raise ValueError(f"Retry(memory_factor={v!r}): it must be greater than 1 (each retry asks for more memory)")
        return v

    @field_validator("max_memory", mode="before")
    @classmethod
    def _max_memory(cls, v: Any) -> int | None:
        return parse_memory(v)

    @field_validator("on_exit_codes", mode="before")
    @classmethod
    def _exit_codes(cls, v: Any) -> Any:
        if v is None:
            return None
        codes = [v] if isinstance(v, int) else list(v) if isinstance(v, (list, tuple, set, frozenset)) else None
        if codes is None or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise ValueError(f"Retry(on_exit_codes={v!r}): it must be a list of integer exit codes")
        return tuple(codes)

    @field_validator("spot")
    @classmethod
    def _spot(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"Retry(spot={v!r}): it must be 0 or more reclaims")
        return v

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

    def escalated(self, memory: int | None) -> int | None:
        """The memory the attempt after an out-of-memory failure asks for: ``memory`` x ``memory_factor``, capped
        at ``max_memory`` (``memory`` unchanged without a factor or a first request)."""
        if self.memory_factor is None or memory is None:
            return memory
        more = int(memory * self.memory_factor)
        return min(more, self.max_memory) if self.max_memory is not None else more


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
