"""The ``gflow`` command line: run, runs, logs, resume, version."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gflow import __version__
from gflow._params import parse_params as _parse_params
from gflow.errors import GflowError, TaskFailed
from gflow.states import State

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
_STATE_STYLE = {"SUCCEEDED": "green", "CACHED": "cyan", "FAILED": "red", "CANCELLED": "yellow",
                "RUNNING": "blue", "RETRYING": "magenta", "QUEUED": "white", "PENDING": "dim"}
_SHORT = {"PENDING": "pend", "QUEUED": "queue", "RUNNING": "run", "RETRYING": "retry", "SUCCEEDED": "ok",
          "CACHED": "cached", "FAILED": "fail", "CANCELLED": "cancel"}
_COLUMNS = ("PENDING", "QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "CACHED", "FAILED", "CANCELLED")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


def _progress_table(snapshot: dict[str, Counter], run_id: str, t0: float) -> Table:
    table = Table(title=f"run {run_id} · {time.time() - t0:.1f}s", title_justify="left", expand=False)
    table.add_column("task", no_wrap=True)
    for col in _COLUMNS:
        table.add_column(_SHORT[col], justify="right", style=_STATE_STYLE[col], no_wrap=True)
    for name, counts in sorted(snapshot.items()):
        table.add_row(name, *[str(counts.get(c, "")) if counts.get(c) else "" for c in _COLUMNS])
    return table


def _observer(show: bool):
    """A live rich table of task states while the run goes (only on a terminal)."""

    def start(run_id: str, engine: Any):
        err.print(f"run [bold]{run_id}[/bold] started", markup=True)
        if not show:
            return None
        t0 = time.time()
        stop = threading.Event()
        live = Live(_progress_table({}, run_id, t0), console=err, refresh_per_second=8, transient=False)
        live.start()

        def loop() -> None:
            while not stop.wait(0.2):
                live.update(_progress_table(engine.snapshot(), run_id, t0))

        th = threading.Thread(target=loop, daemon=True)
        th.start()

        def finish() -> None:
            stop.set()
            th.join()
            live.update(_progress_table(engine.snapshot(), run_id, t0))
            live.stop()

        return finish

    return start


def _print_value(value: Any) -> None:
    from pydantic_core import to_jsonable_python

    try:
        text = json.dumps(to_jsonable_python(value), indent=2)
    except Exception:
        text = repr(value)
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _run_flow(flow_obj: Any, params: dict, *, executor, profile, store, artifacts, tags, progress, resume_from=None):
    show = progress if progress is not None else err.is_terminal
    result = flow_obj.run(params=params, executor=executor, profile=profile, store=store, artifacts=artifacts,
                          tags=tags, return_run=True, resume_from=resume_from, observer=_observer(show))
    state = result.state
    style = _STATE_STYLE.get(state.value, "white")
    err.print(f"run [bold]{result.id}[/bold] [{style}]{state.value}[/{style}]", markup=True)
    if result.error is not None:
        if isinstance(result.error, GflowError):
            _fail(str(result.error))
        import traceback

        err.print("".join(traceback.format_exception(result.error)), markup=False)
        _fail(f"flow body raised {type(result.error).__name__}: {result.error}")
    _print_value(result.value)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskFailed as e:
            _fail(str(e))
        except GflowError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            err.print("[yellow]interrupted: run cancelled[/yellow]; continue it with [bold]gflow resume RUN_ID"
                      "[/bold]", markup=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """gflow: tasks and flows for protein design, local first, remote unchanged."""


def _common_store(f):
    f = click.option("--store", default=None, help="State store URL (default: the profile's).")(f)
    f = click.option("--profile", default=None, help="Profile from gflow.toml.")(f)
    return f


@main.command()
@click.argument("target")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Flow parameter (JSON value, or a bare string). Repeatable.")
@click.option("--executor", "-e", default=None, help="Executor: local, local://processes, dask://host:port, ...")
@click.option("--artifacts", default=None, help="Artifact store folder or URL.")
@click.option("--events", default=None, help="Live-state layer over the store, e.g. redis://127.0.0.1:6379/0.")
@click.option("--tag", "tags", multiple=True, help="Label the run. Repeatable.")
@click.option("--progress/--no-progress", default=None, help="Live task table (default: when on a terminal).")
@_common_store
def run(target: str, params: tuple[str, ...], executor, artifacts, events, tags, progress, store, profile) -> None:
    """Run a flow: TARGET is path/to/file.py:flow or package.module:flow."""
    from gflow._loader import load_target
    from gflow.flows import Flow

    if events:
        os.environ["GFLOW_EVENTS"] = events
    parsed = _parse_params(params)
    flow_obj = load_target(target, Flow)
    _run_flow(flow_obj, parsed, executor=executor, profile=profile, store=store, artifacts=artifacts,
              tags=list(tags), progress=progress)


@main.command()
@click.argument("run_id")
@click.option("--executor", "-e", default=None, help="Executor for the rerun (default: the profile's).")
@click.option("--artifacts", default=None)
@click.option("--progress/--no-progress", default=None)
@click.option("--force", is_flag=True, help="Resume a run still marked RUNNING on another host.")
@_common_store
def resume(run_id: str, executor, artifacts, progress, force, store, profile) -> None:
    """Rerun a failed, cancelled or killed run; finished tasks are taken from stored results."""
    from gflow._loader import load_target
    from gflow.config import load_profile
    from gflow.flows import Flow
    from gflow.serialization import decode
    from gflow.store import open_store

    prof = load_profile(profile, store=store)
    st = open_store(prof.store)
    rec = st.get_run(run_id)
    if rec.state is State.SUCCEEDED:
        _fail(f"run {rec.id} SUCCEEDED; nothing to resume")
    if rec.state in (State.RUNNING, State.PENDING):
        _mark_killed(st, rec, force)
    flow_obj = load_target(rec.flow_path, Flow)
    params = decode(rec.params)
    _run_flow(flow_obj, params, executor=executor, profile=profile, store=prof.store, artifacts=artifacts,
              tags=rec.tags, progress=progress, resume_from=rec.id)


def _mark_killed(st: Any, rec: Any, force: bool) -> None:
    """A run still marked RUNNING whose driver is gone: record it FAILED before resuming."""
    from gflow.store import driver_alive, end_unfinished

    alive = driver_alive(rec)
    if alive and rec.pid != os.getpid():
        _fail(f"run {rec.id} is still running (driver pid {rec.pid} on this host); cancel it first")
    if alive is None and not force:
        _fail(f"run {rec.id} is marked {rec.state.value} on host {rec.host}; if its driver is gone, use --force")
    now = time.time()
    end_unfinished(st, rec.id, State.FAILED, "DriverLost: the driver process died", now)
    st.set_run_state(rec.id, State.FAILED, now, error=f"DriverLost: driver pid {rec.pid} on {rec.host} is gone")


@main.group()
def runs() -> None:
    """List and inspect runs."""


def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _fmt_dur(d: float | None) -> str:
    if d is None:
        return "-"
    return f"{d * 1000:.0f}ms" if d < 1 else f"{d:.1f}s"


def _state_label(r: Any) -> str:
    """A run's state, saying so when a RUNNING run's driver on this host is gone (killed)."""
    style = _STATE_STYLE.get(r.state.value, "white")
    label = f"[{style}]{r.state.value}[/{style}]"
    from gflow.store import driver_alive

    if r.state in (State.RUNNING, State.PENDING) and r.pid and driver_alive(r) is False:
        label += " [red](driver gone: gflow resume)[/red]"
    return label


@runs.command("ls")
@click.option("--flow", default=None)
@click.option("--state", default=None, type=click.Choice([s.value for s in State], case_sensitive=False))
@click.option("--tag", default=None)
@click.option("--limit", default=20, show_default=True)
@_common_store
def runs_ls(flow, state, tag, limit, store, profile) -> None:
    """Newest runs first."""
    from gflow.config import load_profile
    from gflow.store import open_store

    st = open_store(load_profile(profile, store=store).store)
    table = Table()
    for col in ("run", "flow", "state", "started", "duration", "tasks", "executor", "tags"):
        table.add_column(col, no_wrap=col in ("run", "state", "started"))
    for r in st.list_runs(flow=flow, state=state.upper() if state else None, tag=tag, limit=limit):
        counts = st.counts(r.id)
        table.add_row(r.id, r.flow, _state_label(r), _fmt_ts(r.started or r.created),
                      _fmt_dur(r.duration), str(sum(counts.values())), str(r.executor or "-"), ",".join(r.tags))
    out.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--state", default=None, help="Only task runs in this state.")
@click.option("--limit", default=50, show_default=True, help="Task runs to list (0 = all).")
@_common_store
def runs_show(run_id, state, limit, store, profile) -> None:
    """A run's details and its task runs."""
    from gflow.config import load_profile
    from gflow.store import open_store

    st = open_store(load_profile(profile, store=store).store)
    r = st.get_run(run_id)
    out.print(f"[bold]run[/bold] {r.id}  {_state_label(r)}")
    for label, value in (("flow", f"{r.flow} ({r.flow_path})"), ("params", r.params), ("executor", r.executor),
                         ("image", r.image_tag or "-"), ("started", _fmt_ts(r.started or r.created)),
                         ("duration", _fmt_dur(r.duration)), ("tags", ",".join(r.tags) or "-"),
                         ("resumed from", r.resumed_from), ("parent run", r.parent_run), ("error", r.error)):
        if value:
            out.print(f"  {label:<12} {value}", markup=False, soft_wrap=True)
    counts = st.counts(r.id)
    out.print("  counts       " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), markup=False)
    trs = st.task_runs(r.id, state=state.upper() if state else None, limit=limit or None)
    table = Table()
    for col in ("task run", "task", "state", "attempts", "duration", "error"):
        table.add_column(col, overflow="fold", no_wrap=col in ("task run", "state"))
    for t in trs:
        dur = (t.ended - t.started) if t.ended and t.started else None
        s = _STATE_STYLE.get(t.state.value, "white")
        table.add_row(t.id, t.name, f"[{s}]{t.state.value}[/{s}]", str(t.attempt), _fmt_dur(dur),
                      (t.error or "").split("\n")[0][:120])
    out.print(table)
    total = sum(counts.values())
    if limit and total > len(trs) and not state:
        out.print(f"  ... {total - len(trs)} more task runs (use --limit 0 to list all)")


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="cancelled by user (gflow runs cancel)")
@_common_store
def runs_cancel(run_id, reason, store, profile) -> None:
    """Cancel a run: its driver stops its calls within about a second."""
    from gflow.config import load_profile
    from gflow.store import cancel_run, open_store

    rec = cancel_run(open_store(load_profile(profile, store=store).store), run_id, reason)
    err.print(f"run [bold]{rec.id}[/bold] [yellow]CANCELLED[/yellow]", markup=True)


@main.command()
@click.argument("run_id")
@click.option("--task-run", default=None, help="Only this task run's events (and its traceback).")
@_common_store
def logs(run_id, task_run, store, profile) -> None:
    """A run's event log (every state transition, with timestamps)."""
    from gflow.config import load_profile
    from gflow.store import open_store

    st = open_store(load_profile(profile, store=store).store)
    r = st.get_run(run_id)
    for e in st.events(r.id):
        if task_run and e.task_run_id != task_run:
            continue
        s = _STATE_STYLE.get(e.state.value, "white")
        who = e.task_run_id or "run"
        msg = f" {e.message}" if e.message else ""
        out.print(f"{_fmt_ts(e.ts)}.{int(e.ts * 1000) % 1000:03d} {who} [{s}]{e.state.value}[/{s}] "
                  f"attempt={e.attempt}{msg}", soft_wrap=True)
    if task_run:
        t = st.get_task_run(task_run)
        if t.traceback:
            out.print(t.traceback, markup=False)


@main.command()
def version() -> None:
    """Print gflow's version."""
    out.print(f"gflow {__version__}")


def _register_optional_commands() -> None:
    """Commands that live beside their part (server, images) and need optional extras."""
    import importlib

    for module, names in (("gflow.server.cli", ("server",)), ("gflow.images.cli", ("build", "replay", "worker"))):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("gflow."):
                continue  # that part is not built yet
            mod = None
        for name in names:
            cmd = getattr(mod, name, None) if mod else None
            if cmd is None:
                cmd = _missing_extra(name, module)
            main.add_command(cmd, name)


def _missing_extra(name: str, module: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        try:
            import importlib

            importlib.import_module(module)
        except ImportError as e:
            _fail(f"'gflow {name}' needs an optional dependency: {e}")

    return cmd


_register_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
