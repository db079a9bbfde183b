"""What one attempt used, measured where it runs, and what it cost by the profile's price table (issue 22).

Measured by the code that runs the call (``docs/usage.md``):

- **threads** (``local``, Dask worker threads): the calling thread's CPU time (``time.thread_time``) and the
  growth of the process's peak RSS during the call (``ru_maxrss`` after minus before). Threads share one
  process, so that is the best one can do: a call that stays under the process's earlier peak reads 0, and
  two calls at once share one growth.
- **processes** (``local://processes``' pool worker, ``gflow worker`` on Docker, AWS Batch, Volcano, Slurm,
  GCP Batch): the process's CPU time (``getrusage``, user + system) and its peak RSS during the call: the
  kernel's high-water mark is reset before the call (``/proc/self/clear_refs``) and read after (``VmHWM`` in
  ``/proc/self/status``, which follows the reset; ``ru_maxrss`` does not: a spawned worker inherits its parent's
  at exec); where the reset cannot be done, ``ru_maxrss``, the process's peak since it started.
- **GPU**, where NVML (``nvidia-ml-py``, extra ``gpu``) finds devices: the peak of the devices' used memory and
  of their utilization, sampled every 0.2 s during a process-mode call.

The record is a plain dict under the attempt's ``info["usage"]``, with the names ``gflow report`` reads
(:data:`USAGE_KEYS`), plus the resources the call asked for (``requested``), which cost is computed from.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from gflow.errors import ConfigError

__all__ = ["USAGE_KEYS", "Prices", "UsageSummary", "attempt_cost", "attempt_usages", "clean_usage", "parse_prices",
           "process_meter", "summarize", "task_run_cost", "thread_meter", "usage_of"]

#: the measured numbers an attempt's ``info["usage"]`` carries (the names docs/lineage.md documents)
USAGE_KEYS = ("wall_seconds", "cpu_seconds", "peak_memory_bytes", "gpu_peak_memory_bytes", "gpu_utilization")
#: ru_maxrss is in KiB on Linux, bytes on macOS
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024
_getrusage, _SELF, _thread_time, _time = resource.getrusage, resource.RUSAGE_SELF, time.thread_time, time.time


_DEFAULT_ASK = (1, None, 0, False)
_asks: dict[Any, dict[str, Any] | None] = {}


def requested(task: Any) -> dict[str, Any] | None:
    """What a call of ``task`` asked for (recorded with its usage: the cost is computed from it); None for the
    default (1 CPU, no memory asked, no GPU, on demand), which costs nothing to record. One dict per resources."""
    res = getattr(getattr(task, "options", None), "resources", None)
    if res is None:
        return None
    try:
        return _asks[res]
    except KeyError:
        ask = (res.cpu, res.memory, res.gpu, res.spot)
        got = _asks[res] = None if ask == _DEFAULT_ASK else \
            {"cpu": res.cpu, "memory_bytes": res.memory, "gpu": res.gpu, "spot": res.spot}
        return got
    except TypeError:  # unhashable: not a Resources
        return None


# -- threads ----------------------------------------------------------------------------------------------------

_THREAD = getattr(resource, "RUSAGE_THREAD", None)


def thread_meter() -> tuple[float, float, int]:
    """Start measuring a call in this thread; hand the result to :func:`thread_usage`. One ``getrusage`` each
    side: per-thread CPU (``RUSAGE_THREAD``, Linux) and the process's peak RSS in one reading."""
    if _THREAD is not None:
        ru = _getrusage(_THREAD)
        return _time(), ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    return _time(), _thread_time(), _getrusage(_SELF).ru_maxrss


def thread_usage(m: tuple[float, float, int], task: Any = None, end: float | None = None) -> dict[str, Any]:
    """What the call started at ``m`` used: wall and thread CPU seconds, the process's peak RSS growth (and what
    it asked for, where that is not the default)."""
    t0, c0, r0 = m
    if _THREAD is not None:
        ru = _getrusage(_THREAD)
        cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    else:
        cpu, rss = _thread_time(), _getrusage(_SELF).ru_maxrss
    out: dict[str, Any] = {"wall_seconds": (end or _time()) - t0, "cpu_seconds": cpu - c0,
                           "peak_memory_bytes": (rss - r0) * _RSS_UNIT if rss > r0 else 0}
    req = requested(task)
    if req is not None:
        out["requested"] = req
    return out


# -- processes --------------------------------------------------------------------------------------------------

_clear_refs: tuple[int, int] | None = None  # (pid, fd): opened once per process


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``5`` to ``/proc/self/clear_refs``, Linux >= 4.0); False where it cannot."""
    global _clear_refs
    pid = os.getpid()
    try:
        if _clear_refs is None or _clear_refs[0] != pid:  # a forked child opens its own
            _clear_refs = (pid, os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC))
        os.write(_clear_refs[1], b"5")
        return True
    except OSError:
        _clear_refs = (pid, -1)
        return False


def _peak_since_reset() -> int | None:
    """The high-water mark that ``clear_refs`` resets (``VmHWM``), in bytes; None where /proc has none.

    Not ``ru_maxrss``: that also keeps ``signal->maxrss``, which a spawned child inherits at exec from the mm it
    was forked with (a pool worker started by a 1.8 GB test process read 1.8 GB for a 5 MB call)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _ProcessMeter:
    __slots__ = ("t0", "cpu0", "gpu", "reset")

    def __init__(self) -> None:
        self.reset = _reset_peak()  # VmHWM follows the reset: the peak read after the call is the call's own
        self.gpu = _GpuSampler.start()
        ru = _getrusage(_SELF)
        self.cpu0 = ru.ru_utime + ru.ru_stime
        self.t0 = _time()

    def stop(self, task: Any = None) -> dict[str, Any]:
        end = _time()
        ru = _getrusage(_SELF)
        peak = _peak_since_reset() if self.reset else None
        out: dict[str, Any] = {"wall_seconds": end - self.t0, "cpu_seconds": ru.ru_utime + ru.ru_stime - self.cpu0,
                               "peak_memory_bytes": peak if peak is not None else ru.ru_maxrss * _RSS_UNIT}
        req = requested(task)
        if req is not None:
            out["requested"] = req
        if self.gpu is not None:
            out.update(self.gpu.stop())
        return out


def process_meter() -> _ProcessMeter:
    """Start measuring a call that has this process to itself; ``.stop(task)`` returns its usage."""
    return _ProcessMeter()


# -- GPU (NVML) -------------------------------------------------------------------------------------------------

_nvml: Any = None  # the module once initialised with devices; False when there is none (or no NVML)


def _nvml_handles() -> list[Any]:
    global _nvml
    if _nvml is None:
        _nvml = False
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                _nvml = pynvml
        except Exception:  # noqa: BLE001 - no library, no driver, no device: no GPU usage recorded
            _nvml = False
    if _nvml is False:
        return []
    try:
        return [_nvml.nvmlDeviceGetHandleByIndex(i) for i in range(_nvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001
        return []


class _GpuSampler:
    """Samples the devices' used memory and utilization until stopped (a daemon thread, 0.2 s period)."""

    PERIOD = 0.2

    def __init__(self, handles: list[Any]):
        self.handles = handles
        self.mem = 0
        self.util = 0
        self.done = threading.Event()
        self.sample()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="gflow-gpu-usage")
        self.thread.start()

    @classmethod
    def start(cls) -> _GpuSampler | None:
        handles = _nvml_handles()
        return cls(handles) if handles else None

    def sample(self) -> None:
        try:
            self.mem = max(self.mem, sum(int(_nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles))
            self.util = max(self.util, max(int(_nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self.handles))
        except Exception:  # noqa: BLE001 - a device that stops answering keeps the samples so far
            pass

    def _loop(self) -> None:
        while not self.done.wait(self.PERIOD):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.thread.join(1)
        self.sample()
        return {"gpu_peak_memory_bytes": self.mem, "gpu_utilization": self.util}


# -- reading records --------------------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) and math.isfinite(v) and v >= 0 else None


def clean_usage(raw: Any) -> dict[str, Any] | None:
    """A usage record read from an outcome record or the store (untrusted): known numeric fields only."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for k in USAGE_KEYS:
        v = _num(raw.get(k))
        if v is not None:
            out[k] = int(v) if k.endswith("_bytes") or k == "gpu_utilization" else v
    batch = raw.get("batch")
    if type(batch) is int and batch > 0:
        out["batch"] = batch
    req = raw.get("requested")
    if isinstance(req, dict):
        r = {k: _num(req.get(k)) for k in ("cpu", "memory_bytes", "gpu")}
        out["requested"] = {**{k: v for k, v in r.items() if v is not None}, "spot": req.get("spot") is True}
    return out or None


def usage_of(info: Any) -> dict[str, Any] | None:
    """An attempt's usage from its recorded ``info`` (``info["usage"]``), checked; None where none was recorded."""
    return clean_usage(info.get("usage")) if isinstance(info, dict) else None


# -- prices -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prices:
    """A profile's price table (``[profiles.X.prices]``), in one currency per hour.

    The example in docs/usage.md is an illustration, not a claim about any provider's prices."""

    vcpu_hour: float
    gib_hour: float
    gpu_hour: float
    spot_factor: float = 1.0
    currency: str = "USD"


_PRICE_KEYS = ("vcpu_hour", "gib_hour", "gpu_hour")


def parse_prices(table: Any, where: str = "prices") -> Prices:
    """The price table of a profile, or :class:`ConfigError` with one line naming what is wrong."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of numbers ({', '.join(_PRICE_KEYS)}, spot_factor)")
    unknown = sorted(set(table) - set(_PRICE_KEYS) - {"spot_factor", "currency"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(_PRICE_KEYS)}, spot_factor, "
                          "currency")
    missing = [k for k in _PRICE_KEYS if k not in table]
    if missing:
        raise ConfigError(f"{where}: missing price {missing[0]!r} (all of {', '.join(_PRICE_KEYS)} are needed; "
                          "write 0 for what costs nothing)")
    vals: dict[str, float] = {}
    for k in (*_PRICE_KEYS, "spot_factor"):
        if k not in table:
            continue
        v = table[k]
        if type(v) not in (int, float) or not math.isfinite(v):
            raise ConfigError(f"{where}: {k} must be a number, not {v!r}")
        if v < 0:
            raise ConfigError(f"{where}: {k} is negative ({v}); prices must be >= 0")
        vals[k] = float(v)
    cur = table.get("currency", "USD")
    if not isinstance(cur, str) or not cur.strip():
        raise ConfigError(f"{where}: currency must be a name such as 'USD', not {cur!r}")
    return Prices(**vals, currency=cur.strip())


def attempt_cost(usage: dict[str, Any] | None, prices: Prices | None) -> float | None:
    """The estimated cost of one attempt: its wall hours times what it asked for (vCPUs, GiB of memory,
    GPUs) at the table's rates, times ``spot_factor`` on spot capacity, divided among the calls of a batch that
    shared it. Memory not asked for counts as the measured peak. None without a price table or a measured wall time."""
    if prices is None or not usage or "wall_seconds" not in usage:
        return None
    req = usage.get("requested") or {}
    cpu = req.get("cpu", 1.0)
    mem = req.get("memory_bytes")
    if mem is None:
        mem = usage.get("peak_memory_bytes", 0)
    rate = cpu * prices.vcpu_hour + mem / 2**30 * prices.gib_hour + req.get("gpu", 0) * prices.gpu_hour
    if req.get("spot"):
        rate *= prices.spot_factor
    # a batch's calls share one measurement (``batch_size`` tasks): each carries its share
    return usage["wall_seconds"] / 3600 * rate / usage.get("batch", 1)



# -- summaries: per attempt, task run, task (a map is its task's calls) and run ---------------------------------

def attempt_usages(info: Any, attempt: int) -> dict[int, dict[str, Any]]:
    """Each attempt's usage, by attempt number, from a task run's ``info`` (a retried call keeps the earlier
    attempts' under ``usage_by_attempt``; the last attempt's is ``usage``)."""
    out: dict[int, dict[str, Any]] = {}
    if not isinstance(info, dict):
        return out
    hist = info.get("usage_by_attempt")
    if isinstance(hist, dict):
        for k, v in list(hist.items())[:1000]:
            u = clean_usage(v)
            if u and isinstance(k, str) and k.isdigit():
                out[int(k)] = u
    last = usage_of(info)
    if last:
        out[attempt] = last
    return out


def task_run_cost(info: Any, attempt: int, prices: Prices | None) -> float | None:
    """The estimated cost of all of a task run's attempts; None without prices or usage."""
    costs = [c for u in attempt_usages(info, attempt).values() if (c := attempt_cost(u, prices)) is not None]
    return sum(costs) if costs else None


@dataclass
class UsageSummary:
    """What a group of task runs (one task's calls, a map, a run) used, by the last attempts' measurements,
    and their estimated cost (every attempt's)."""

    name: str
    calls: int = 0
    measured: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    gpu_peak_memory_bytes: int | None = None
    requested_memory_bytes: float | None = None
    requested_cpu: float | None = None
    cost: float | None = None
    is_map: bool = False

    def add(self, t: Any, prices: Prices | None) -> None:
        self.calls += 1
        self.is_map = self.is_map or getattr(t, "map_index", None) is not None
        u = usage_of(t.info)
        if u:
            self.measured += 1
            self.cpu_seconds += u.get("cpu_seconds", 0.0)
            self.wall_seconds += u.get("wall_seconds", 0.0)
            self.peak_memory_bytes = max(self.peak_memory_bytes, u.get("peak_memory_bytes", 0))
            if "gpu_peak_memory_bytes" in u:
                self.gpu_peak_memory_bytes = max(self.gpu_peak_memory_bytes or 0, u["gpu_peak_memory_bytes"])
            req = u.get("requested") or {}
            self.requested_memory_bytes = req.get("memory_bytes", self.requested_memory_bytes)
            self.requested_cpu = req.get("cpu", self.requested_cpu)
        c = task_run_cost(t.info, t.attempt, prices)
        if c is not None:
            self.cost = (self.cost or 0.0) + c

    @property
    def memory_ratio(self) -> float | None:
        """Peak used over requested memory: far below 1 asks too much, near or over 1 too little."""
        if not self.measured or not self.requested_memory_bytes:
            return None
        return self.peak_memory_bytes / self.requested_memory_bytes


def summarize(task_runs: Any, prices: Prices | None) -> tuple[UsageSummary, list[UsageSummary]]:
    """The run's total and one summary per task (a map's elements are its task's calls), outliers first: the
    tasks whose peak memory is furthest from what they asked for (either way), then by CPU seconds."""
    total = UsageSummary("run")
    by: dict[str, UsageSummary] = {}
    for t in task_runs:
        total.add(t, prices)
        s = by.get(t.name)
        if s is None:
            s = by[t.name] = UsageSummary(t.name)
        s.add(t, prices)

    def off(s: UsageSummary) -> tuple[float, float]:
        r = s.memory_ratio
        return (-abs(math.log(r)) if r else 0.0, -s.cpu_seconds)

    return total, sorted(by.values(), key=off)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
