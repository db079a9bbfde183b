"""The ``gflow`` command line: run, resume, runs, logs, version (build/replay/worker/server live beside their parts)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from gflow import __version__
from gflow._params import parse_params as _parse_params
from gflow.errors import GflowError
from gflow.states import State

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
_STATE_STYLE = {"SUCCEEDED": "green", "CACHED": "cyan", "FAILED": "red", "CANCELLED": "yellow",
                "RUNNING": "blue", "RETRYING": "magenta", "QUEUED": "white", "PENDING": "dim"}
_SHORT = {"PENDING": "pend", "QUEUED": "queue", "RUNNING": "run", "RETRYING": "retry", "SUCCEEDED": "ok",
          "CACHED": "cached", "FAILED": "fail", "CANCELLED": "cancel"}
_COLUMNS = ("PENDING", "QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "CACHED", "FAILED", "CANCELLED")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


def _state(value: str) -> str:
    style = _STATE_STYLE.get(value, "white")
    return f"[{style}]{escape(value)}[/{style}]"


@contextmanager
def _store(profile: str | None, store: str | None) -> Iterator[Any]:
    """The profile's state store, closed afterwards."""
    from gflow.config import load_profile
    from gflow.store import open_store

    st = open_store(load_profile(profile, store=store).store)
    try:
        yield st
    finally:
        st.close()


def _progress_table(snapshot: dict[str, Counter], run_id: str, t0: float) -> Table:
    table = Table(title=f"run {run_id} · {time.time() - t0:.1f}s", title_justify="left", expand=False)
    table.add_column("task", no_wrap=True)
    for col in _COLUMNS:
        table.add_column(_SHORT[col], justify="right", style=_STATE_STYLE[col], no_wrap=True)
    for name, counts in sorted(snapshot.items()):
        table.add_row(escape(name), *[str(counts.get(c, "")) if counts.get(c) else "" for c in _COLUMNS])
    return table


def _observer(show: bool) -> Any:
    """Says where the run is recorded, and shows a live table of task states (only on a terminal)."""

    def start(run_id: str, engine: Any) -> Any:
        err.print(f"run [bold]{escape(run_id)}[/bold] started", markup=True)
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


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON of a flow's value for stdout (NaN and infinities as the strings "NaN", "Infinity")."""
    from gflow.serialization import to_json_text

    try:
        return to_json_text(value, indent=indent)
    except Exception:  # noqa: BLE001 - a value with no JSON form: say what it is
        return json.dumps(repr(value))


def _short_text(value: Any, lines: int = 12, width: int = 110) -> str:
    """A few lines for people: one per element of a list, each the object's ``summary()`` (sequences, SMILES,
    scores, file paths; an Experiment's table on lines of its own) or else its compact JSON, lines shortened."""
    listed = isinstance(value, (list, tuple))
    items = value if listed else [value]
    rows = []
    for i, v in enumerate(items[:lines]):
        summary = getattr(v, "summary", None)
        text = summary() if callable(summary) and not isinstance(v, type) else json_text(v, indent=None)
        for n, line in enumerate(str(text).splitlines() or [""]):
            line = line if len(line) <= width else line[: width - 3] + "..."
            rows.append((f"{i + 1:>3}. " if n == 0 else "     ") + line if listed else line)
    if len(items) > lines:
        rows.append(f"     ... {len(items) - lines} more")
    return "\n".join(rows)


def _show_progress_logs() -> None:
    """Image builds and other long steps say what they do (one line each, on stderr)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gflow: %(message)s"))
    for name in ("gflow.images", "gflow.executors"):
        lg = logging.getLogger(name)
        if not lg.handlers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
            lg.propagate = False


def _run_flow(flow_obj: Any, params: dict, *, progress: bool | None, output: str = "json", **run_kw: Any) -> None:
    show = progress if progress is not None else err.is_terminal
    _show_progress_logs()
    result = flow_obj.run(params=params, return_run=True, observer=_observer(show), **run_kw)
    err.print(f"run [bold]{escape(result.id)}[/bold] {_state(result.state.value)}", markup=True)
    if result.reused_changed:
        err.print(f"reused the finished calls of tasks whose code changed since: "
                  f"{escape(', '.join(result.reused_changed))} (gflow resume --rerun-changed recomputes them)",
                  markup=True)
    if result.error is not None:
        if isinstance(result.error, GflowError):
            _fail(str(result.error))
        import traceback

        err.print("".join(traceback.format_exception(result.error)), markup=False)
        _fail(f"flow body raised {type(result.error).__name__}: {result.error}")
    if output == "short":
        out.print(_short_text(result.value), markup=False, highlight=False, soft_wrap=True)
        err.print(f"details: gflow runs show {escape(result.id)}", markup=True)
    elif output == "json":
        out.print(json_text(result.value), markup=False, highlight=False, soft_wrap=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GflowError as e:
            _fail(str(e))
        except RecursionError:
            _fail("a value is nested too deeply")
        except KeyboardInterrupt:
            err.print("[yellow]interrupted: run cancelled[/yellow]; continue it with [bold]gflow resume RUN_ID"
                      "[/bold]", markup=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """gflow: tasks and flows for protein design, local first, remote unchanged."""


def _common_store(f: Any) -> Any:
    f = click.option("--store", default=None, help="State store URL (default: the profile's).")(f)
    f = click.option("--profile", default=None, help="Profile from gflow.toml.")(f)
    return f


@main.command()
@click.argument("target")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Flow (or task) parameter: a JSON value, or a bare string. Repeatable.")
@click.option("--executor", "-e", default=None, help="Executor: local, local://processes, dask://host:port, ...")
@click.option("--artifacts", default=None, help="Artifact store folder or URL.")
@click.option("--events", default=None, help="Live-state layer over the store, e.g. redis://127.0.0.1:6379/0.")
@click.option("--tag", "tags", multiple=True, help="Label the run. Repeatable.")
@click.option("--progress/--no-progress", default=None, help="Live task table (default: when on a terminal).")
@click.option("--output", type=click.Choice(["json", "short", "none"]), default="json", show_default=True,
              help="How to print the result on stdout: all of it as JSON, a few lines, or nothing.")
@click.option("--run-id", default=None, help="Id for the new run (default: a fresh one).")
@_common_store
def run(target: str, params: tuple[str, ...], executor: str | None, artifacts: str | None, events: str | None,
        tags: tuple[str, ...], progress: bool | None, output: str, run_id: str | None, store: str | None,
        profile: str | None) -> None:
    """Run a flow, or one call of a task: TARGET is path/to/file.py:NAME or package.module:NAME."""
    from gflow._loader import load_runnable

    parsed = _parse_params(params)
    flow_obj = load_runnable(target)
    _run_flow(flow_obj, parsed, executor=executor, profile=profile, store=store, artifacts=artifacts, events=events,
              tags=list(tags), progress=progress, output=output, run_id=run_id)


@main.command()
@click.argument("run_id")
@click.option("--executor", "-e", default=None, help="Executor for the rerun (default: the profile's).")
@click.option("--artifacts", default=None)
@click.option("--events", default=None, help="Live-state layer over the store, e.g. redis://127.0.0.1:6379/0.")
@click.option("--progress/--no-progress", default=None)
@click.option("--rerun-changed", is_flag=True,
              help="Recompute the finished calls whose task code changed since (default: reuse them).")
@click.option("--force", is_flag=True, help="Resume even if a resume of this run already succeeded, or the run is "
                                            "still marked RUNNING on another host.")
@click.option("--output", type=click.Choice(["json", "short", "none"]), default="json", show_default=True)
@click.option("--run-id", "new_run_id", default=None, help="Id for the new run (default: a fresh one).")
@_common_store
def resume(run_id: str, executor: str | None, artifacts: str | None, events: str | None, progress: bool | None,
           rerun_changed: bool, force: bool, output: str, new_run_id: str | None, store: str | None,
           profile: str | None) -> None:
    """Rerun a failed, cancelled or killed run as a new linked run: every call that finished is reused."""
    from gflow._loader import load_runnable
    from gflow.serialization import decode

    with _store(profile, store) as st:
        rec = st.get_run(run_id)
    if rec.state is State.SUCCEEDED and not force:
        _fail(f"run {rec.id} SUCCEEDED; nothing to resume")
    flow_obj = load_runnable(rec.flow_path)
    params = decode(rec.params)
    _run_flow(flow_obj, params, executor=executor, profile=profile, store=store, artifacts=artifacts, events=events,
              tags=rec.tags, progress=progress, resume_from=rec.id, rerun_changed=rerun_changed, force=force,
              output=output, run_id=new_run_id)


@main.group()
def runs() -> None:
    """List, inspect and cancel runs."""


def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _fmt_dur(d: float | None) -> str:
    if d is None:
        return "-"
    if d < 0.001:
        return f"{d * 1e6:.0f}µs"
    return f"{d * 1000:.0f}ms" if d < 1 else f"{d:.1f}s"


def _state_label(r: Any) -> str:
    """A run's state, saying so when a RUNNING run's driver on this host is gone (killed)."""
    from gflow.store import driver_alive

    label = _state(r.state.value)
    if r.state in (State.RUNNING, State.PENDING) and r.pid and driver_alive(r) is False:
        label += " [red](driver gone: gflow resume)[/red]"
    return label


def _run_json(r: Any, counts: dict[str, int]) -> dict[str, Any]:
    """One run as ``gflow runs ls --output json`` prints it."""
    return {"id": r.id, "flow": r.flow, "state": r.state.value, "created": r.created, "started": r.started,
            "ended": r.ended, "duration": r.duration, "executor": r.executor, "image_tag": r.image_tag,
            "tags": list(r.tags), "error": r.error, "parent_run": r.parent_run, "resumed_from": r.resumed_from,
            "replay_of": r.replay_of, "tasks": sum(counts.values()), "counts": dict(counts)}


@runs.command("ls")
@click.option("--flow", default=None)
@click.option("--state", default=None, type=click.Choice([s.value for s in State], case_sensitive=False))
@click.option("--tag", default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("--output", "output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: one JSON array of runs (for scripts).")
@click.option("-q", "--quiet", is_flag=True, help="Print run ids only, one per line.")
@_common_store
def runs_ls(flow: str | None, state: str | None, tag: str | None, limit: int, output: str, quiet: bool,
            store: str | None, profile: str | None) -> None:
    """Newest runs first."""
    with _store(profile, store) as st:
        rows = st.list_runs(flow=flow, state=state.upper() if state else None, tag=tag, limit=limit)
        if quiet:
            for r in rows:
                click.echo(r.id)
            return
        counts = st.counts_many([r.id for r in rows])
        if output == "json":
            click.echo(json.dumps([_run_json(r, counts.get(r.id, {})) for r in rows], indent=2))
            return
        table = Table()
        for col in ("run", "flow", "state", "started", "duration", "tasks", "executor", "tags"):
            table.add_column(col, no_wrap=col in ("run", "state", "started"))
        for r in rows:
            table.add_row(escape(r.id), escape(r.flow), _state_label(r), _fmt_ts(r.started or r.created),
                          _fmt_dur(r.duration), str(sum(counts.get(r.id, {}).values())), escape(str(r.executor or "-")),
                          escape(",".join(r.tags)))
    out.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--state", default=None, help="Only task runs in this state.")
@click.option("--limit", default=50, show_default=True, help="Task runs to list (0 = all).")
@click.option("--value", "show_value", is_flag=True, help="Print the run's stored result as JSON and nothing else.")
@_common_store
def runs_show(run_id: str, state: str | None, limit: int, show_value: bool, store: str | None,
              profile: str | None) -> None:
    """A run's details and its task runs."""
    from gflow.serialization import display_json

    with _store(profile, store) as st:
        r = st.get_run(run_id)
        if show_value:
            out.print(json.dumps(display_json(r.result_inline), indent=2) if r.result_inline is not None else "null",
                      markup=False)
            return
        out.print(f"[bold]run[/bold] {escape(r.id)}  {_state_label(r)}")
        params = json.dumps(display_json(r.params), sort_keys=True)
        for label, value in (("flow", f"{r.flow} ({r.flow_path})"), ("params", params), ("executor", r.executor),
                             ("image", r.image_tag or "-"), ("started", _fmt_ts(r.started or r.created)),
                             ("duration", _fmt_dur(r.duration)), ("tags", ",".join(r.tags) or "-"),
                             ("resumed from", r.resumed_from), ("resumed by", r.resumed_by),
                             ("replay of", r.replay_of), ("parent run", r.parent_run), ("error", r.error)):
            if value:
                out.print(f"  {label:<12} {value}", markup=False, soft_wrap=True)
        for m in (r.extra or {}).get("maps") or []:  # partial maps: "map 'score': 9,997 of 10,000 succeeded"
            if isinstance(m, dict):
                out.print(f"  {'map':<12} {m.get('summary')}", markup=False, soft_wrap=True)
        counts = st.counts(r.id)
        out.print("  counts       " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), markup=False)
        trs = st.task_runs(r.id, state=state.upper() if state else None, limit=limit or None)
        table = Table()
        for col in ("task run", "task", "state", "attempts", "duration", "executor", "error"):
            table.add_column(col, overflow="fold", no_wrap=col in ("task run", "state"))
        for t in trs:
            dur = (t.ended - t.started) if t.ended and t.started else None
            table.add_row(escape(t.id), escape(t.name), _state(t.state.value), str(t.attempt), _fmt_dur(dur),
                          escape(t.executor or "-"), escape((t.error or "").split("\n")[0][:120]))
        out.print(table)
        _print_waiting(st, r.id, trs)
        _print_attempts(st, r.id, [t.id for t in trs if t.attempt > 1][:20])
        _print_usage(st, r.id, profile)
        total = sum(counts.values())
        if limit and total > len(trs) and not state:
            out.print(f"  ... {total - len(trs)} more task runs (use --limit 0 to list all)", markup=False)


def _print_usage(st: Any, run_id: str, profile: str | None) -> None:
    """What the run used and its estimated cost (the profile's price table), per task, outliers first."""
    from gflow.config import load_profile
    from gflow.usage import fmt_bytes, summarize

    prices = load_profile(profile).prices
    total, tasks = summarize(st.task_runs(run_id), prices)
    if not total.measured:
        out.print("  usage        not recorded", markup=False)
        return
    cur = prices.currency if prices else ""
    cost = f"{total.cost:.4f} {cur} (estimate)" if total.cost is not None else "no price table in the profile"
    out.print(f"  usage        CPU {total.cpu_seconds:.2f} s, wall {total.wall_seconds:.2f} s over {total.measured} "
              f"task runs; largest peak memory {fmt_bytes(total.peak_memory_bytes)}", markup=False)
    out.print(f"  cost         {cost}", markup=False)
    for s in tasks[:20]:
        used = f"peak {fmt_bytes(s.peak_memory_bytes)} of {fmt_bytes(s.requested_memory_bytes)} asked" \
            if s.requested_memory_bytes else f"peak {fmt_bytes(s.peak_memory_bytes)}"
        gpu = f", GPU peak {fmt_bytes(s.gpu_peak_memory_bytes)}" if s.gpu_peak_memory_bytes is not None else ""
        c = f", cost {s.cost:.4f} {cur}" if s.cost is not None else ""
        kind = f"map of {s.calls}" if s.is_map else f"{s.calls} call{'s' if s.calls != 1 else ''}"
        out.print(f"    {s.name} ({kind}): CPU {s.cpu_seconds:.2f} s, {used}{gpu}{c}", markup=False, soft_wrap=True)


def _print_waiting(st: Any, run_id: str, trs: list[Any]) -> None:
    """Why the listed QUEUED task runs still wait on their backend (gflow.flows.pending), one line each."""
    from gflow.flows.pending import shown_reasons

    for tid, why in shown_reasons(st, run_id, trs).items():
        out.print(f"  waiting      {tid}: QUEUED ({why})", markup=False, soft_wrap=True)


def _print_attempts(st: Any, run_id: str, retried: list[str]) -> None:
    """Each attempt of the retried task runs: how it ended (by error type) and what it asked for."""
    if not retried:
        return
    from gflow.store.base import asked_of, error_type_of

    want = set(retried)
    by: dict[str, dict[int, list[str]]] = {}
    for e in st.events(run_id):
        if e.task_run_id not in want:
            continue
        facts = by.setdefault(e.task_run_id, {}).setdefault(e.attempt, ["", ""])
        asked = asked_of(e.message)
        if asked is not None:
            facts[1] = asked
        elif e.state.value in ("RETRYING", "FAILED"):
            facts[0] = error_type_of(e.message) or e.state.value
        elif e.state.value == "SUCCEEDED":
            facts[0] = "SUCCEEDED"
    for tid in retried:
        parts = [f"{n} {f[0] or '-'}" + (f" ({f[1]})" if f[1] else "") for n, f in sorted(by.get(tid, {}).items())]
        out.print(f"  attempts of {tid}: " + ", ".join(parts), markup=False, soft_wrap=True)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="cancelled by user (gflow runs cancel)")
@_common_store
def runs_cancel(run_id: str, reason: str, store: str | None, profile: str | None) -> None:
    """Cancel a run: its driver stops its calls within about a second."""
    from gflow.store import cancel_run

    with _store(profile, store) as st:
        rec = cancel_run(st, run_id, reason)
    err.print(f"run [bold]{escape(rec.id)}[/bold] [yellow]CANCELLED[/yellow]", markup=True)


@main.command()
@click.argument("run_id")
@click.option("--task-run", default=None, help="Only this task run: its events, traceback and the backend's log.")
@_common_store
def logs(run_id: str, task_run: str | None, store: str | None, profile: str | None) -> None:
    """A run's event log (every state transition, with timestamps)."""
    with _store(profile, store) as st:
        r = st.get_run(run_id)
        for e in st.events(r.id):
            if task_run and e.task_run_id != task_run:
                continue
            who = e.task_run_id or "run"
            msg = f" {escape(e.message)}" if e.message else ""
            out.print(f"{_fmt_ts(e.ts)}.{int(e.ts * 1000) % 1000:03d} {escape(who)} {_state(e.state.value)} "
                      f"attempt={e.attempt}{msg}", soft_wrap=True)
        if task_run:
            t = st.get_task_run(task_run)
            if t.traceback:
                out.print(t.traceback, markup=False)
            _backend_log(t.executor or r.executor, t)


def _backend_log(spec: str | None, t: Any) -> None:
    """The backend's own log of a task run (CloudWatch, pod logs, Slurm output files), or one line saying why
    there is none."""
    from gflow.executors import executor_class

    def none(why: str) -> None:
        out.print(f"--- no backend log: {why} ---", markup=False, soft_wrap=True)

    if not t.handle:
        none(f"task run {t.id} ({t.state.value}) was never handed to a backend (cached, reused, or refused before "
             f"submission)")
        return
    if not spec:
        none("the run recorded no executor")
        return
    cls = executor_class(spec)
    if cls is None:
        none(f"the executor {spec!r} the run recorded is not available here (its extra is not installed?)")
        return
    try:
        text = cls.fetch_logs(spec, t.handle, t.info)
    except GflowError as e:
        none(str(e))
        return
    if text is None:
        none(f"the {cls.name} executor keeps no log of its own (task output goes to the driver's terminal)")
        return
    out.print(f"--- backend log ({t.handle}) ---", markup=False)
    out.print(text if text.strip() else "(empty: the task wrote nothing)", markup=False)


@main.command()
@click.argument("ident", metavar="OBJECT_OR_ARTIFACT_ID")
@click.option("--ro-crate", "crate", default=None, metavar="DIR", help="Also write the lineage as an RO-Crate here.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--max-nodes", default=2000, show_default=True, help="Stop walking after this many task runs.")
@_common_store
def lineage(ident: str, crate: str | None, output: str, max_nodes: int, store: str | None,
            profile: str | None) -> None:
    """What made an output: every task run back from it (code version, image, models read, run)."""
    from gflow.lineage import ro_crate, walk

    with _store(profile, store) as st:
        try:
            graph = walk(st, ident, max_nodes=max_nodes)
        except GflowError as e:
            _fail(str(e))
    if output == "json":
        print(json.dumps(graph.to_json(), indent=2))
    else:
        for n in graph.nodes:
            where = f"map[{n.map_index}] " if n.map_index is not None else ""
            out.print(f"{escape(n.id)}  {escape(n.name)} {where}{_state(n.state)}  version {escape(n.version or '-')}"
                      f"  image {escape(n.image or n.run_image or '-')}  run {escape(n.run_id)}")
            for m in n.models:
                out.print(f"    model {escape(m)}")
        if graph.read_by:
            out.print(f"{escape(ident)}: an input no task run in this store produced; read by "
                      f"{len(graph.read_by)} task run(s): {escape(', '.join(graph.read_by[:20]))}")
        if graph.truncated:
            out.print(f"[yellow]stopped after {max_nodes} task runs (--max-nodes)[/yellow]")
    if crate:
        err.print(f"RO-Crate: {ro_crate(graph, crate)}")


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", "path", default="report.html", show_default=True, help="The HTML file to write.")
@click.option("--artifacts", default=None, help="Artifact store folder or URL (default: the profile's), to show "
              "a result that is not stored inline.")
@_common_store
def report(run_id: str, path: str, artifacts: str | None, store: str | None, profile: str | None) -> None:
    """One self-contained HTML file about a run: summary, timeline, DAG, usage, cost, failures, versions, outputs."""
    from gflow.artifacts import open_artifacts
    from gflow.config import load_profile
    from gflow.report import write_report

    prof = load_profile(profile, store=store)
    arts = None
    try:
        arts = open_artifacts(artifacts or prof.artifacts)
    except Exception as e:  # noqa: BLE001 - the report is still useful without the artifact store
        err.print(f"[yellow]note:[/yellow] no artifact store ({escape(str(e))}): results not stored inline "
                  "are left out", markup=True)
    with _store(profile, store) as st:
        try:
            out_path = write_report(st, run_id, path, arts, prices=prof.prices)
        except GflowError as e:
            _fail(str(e))
    err.print(f"report written to {escape(str(out_path))}")


@main.group()
def cache() -> None:
    """Why calls ran instead of coming from the cache."""


@cache.command("explain")
@click.argument("run_id")
@click.argument("task")
@click.option("--limit", default=20, show_default=True, help="Calls of the task to explain.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_common_store
def cache_explain(run_id: str, task: str, limit: int, output: str, store: str | None, profile: str | None) -> None:
    """For each call of TASK in RUN_ID that ran: the nearest earlier call and what differs (code, image, input)."""
    from gflow.explain import explain

    with _store(profile, store) as st:
        try:
            diffs = explain(st, run_id, task, limit=limit)
        except GflowError as e:
            _fail(str(e))
    if output == "json":
        print(json.dumps([d.to_json() for d in diffs], indent=2))
        return
    for d in diffs:
        for line in d.lines():
            out.print(escape(line))


@main.command()
def version() -> None:
    """Print gflow's version."""
    out.print(f"gflow {__version__}", markup=False)


def _register_optional_commands() -> None:
    """Commands that live beside their part (server, images) and need optional extras."""
    import importlib

    for module, names in (("gflow.server.cli", ("server",)), ("gflow.images.cli", ("build", "replay", "worker"))):
        mod: Any
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
    from gflow.serve import cli_serve

    main.add_command(cli_serve, "serve")


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
