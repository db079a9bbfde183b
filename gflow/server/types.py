"""The GraphQL output types: runs, task runs, events, lineage, value views and driver launches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from gflow.server import display as D
from gflow.server import loaders as L
from gflow.server.guard import gql_error
from gflow.states import RANK, TERMINAL, State
from gflow.store import Event, RunRecord, TaskRunRecord
from gflow.store.base import asked_of, error_type_of

if TYPE_CHECKING:
    from gflow.server.drivers import Launch

strawberry.enum(State, name="State", description="A run's or task run's state.")  # registers gflow's own enum

NOT_FOUND, BAD_INPUT, CONFLICT, NOT_AVAILABLE = "NOT_FOUND", "BAD_USER_INPUT", "CONFLICT", "NOT_AVAILABLE"
UNAUTHENTICATED, FORBIDDEN, DRIVER_FAILED = "UNAUTHENTICATED", "FORBIDDEN", "DRIVER_FAILED"


@strawberry.type(description="How many task runs of a run are in one state.")
class StateCount:
    state: State
    count: int


def counts_list(counts: dict[str, int]) -> list[StateCount]:
    return [StateCount(state=State(s), count=n)
            for s, n in sorted(counts.items(), key=lambda kv: (RANK[State(kv[0])], kv[0]))]


@strawberry.type(description="A long text cut to its head and tail (`text`), with its full `size` in characters.")
class TextExcerpt:
    text: str
    size: int
    truncated: bool
    omitted: int = strawberry.field(description="Characters left out of the middle.")

    @classmethod
    def of(cls, e: D.Excerpt | None) -> TextExcerpt | None:
        return None if e is None else cls(text=e.text, size=e.size, truncated=e.truncated, omitted=e.omitted)


def _excerpt_args(head: int, tail: int) -> None:
    if not (0 <= head <= 1_000_000 and 0 <= tail <= 1_000_000):
        raise gql_error("head and tail must be between 0 and 1,000,000 characters", BAD_INPUT)


@strawberry.type(description="A gflow object found in a value (Protein, Molecule, Score, ...).")
class ObjectView:
    kind: str = strawberry.field(description="The object's class name.")
    type: str = strawberry.field(description="The stored type path (never imported by the server).")
    data: JSON = strawberry.field(description="Its fields as the user wrote them.")
    depiction_svg: str | None = strawberry.field(
        description="Molecules: a 2D depiction (SVG text) when RDKit is installed on the server.")
    view: JSON | None = strawberry.field(default=None, description=(
        "What a viewer needs (gflow.server.depict): a molecule's depiction, a sequence with its mutations, a "
        "structure's text for the 3D viewer, a score; null when the JSON is all there is."))


@strawberry.type(description="A stored value for people: as the user wrote it, with the gflow objects inside it.")
class ValueView:
    display: JSON
    objects: list[ObjectView]
    size: int = strawberry.field(description="Characters of stored canonical JSON.")
    truncated: bool = strawberry.field(description="True when the value was too big to show.")
    source: str = strawberry.field(description="'inline' (in the store) or 'artifact' (read from the artifact store).")
    table: JSON | None = strawberry.field(default=None, description=(
        "A list of same-shaped records as {columns, rows, truncated}, to show as a table; else null."))

    @classmethod
    def of(cls, v: D.ValueInfo | None) -> ValueView | None:
        from gflow.server.depict import table_of, view_of

        if v is None:
            return None
        return cls(display=v.display, size=v.size, truncated=v.truncated, source=v.source,
                   table=cast(Any, table_of(v.display)),
                   objects=[ObjectView(kind=o.kind, type=o.type, data=o.data, depiction_svg=o.depiction_svg,
                                       view=cast(Any, view_of(o.kind, o.data))) for o in v.objects])


@strawberry.type(description="A driver process the server started (retryTask: `gflow resume`, replayRun: "
                             "`gflow replay`).")
class DriverLaunch:
    id: strawberry.ID = strawberry.field(description="The new run's id (the same as runId).")
    run_id: strawberry.ID = strawberry.field(description="The run the driver records (may not exist for a moment).")
    kind: str = strawberry.field(description="'resume' or 'replay'.")
    source_run: strawberry.ID
    task_run: strawberry.ID | None = strawberry.field(description="The task run retryTask was asked for.")
    pid: int
    host: str
    log_file: str
    command: list[str]
    started: float
    exit_code: int | None
    ended: float | None
    state: str = strawberry.field(description="running | exited | gone (died unseen) | unknown (another host).")

    @strawberry.field(description="The last bytes of the driver's output (stdout and stderr).")
    def log_tail(self, max_bytes: int = 8192) -> str:
        from gflow.server.drivers import tail

        if not 0 <= max_bytes <= 1_000_000:
            raise gql_error("maxBytes must be between 0 and 1,000,000", BAD_INPUT)
        return tail(self.log_file, max_bytes)

    @strawberry.field(description="The run the driver created (null until it has).")
    async def run(self, info: Info) -> Run | None:
        rec = await info.context.loaders.runs.load(str(self.run_id))
        return Run.of(rec) if rec is not None else None

    @classmethod
    def of(cls, x: Launch) -> DriverLaunch:
        return cls(id=strawberry.ID(x.run_id), run_id=strawberry.ID(x.run_id), kind=x.kind,
                   source_run=strawberry.ID(x.source_run),
                   task_run=strawberry.ID(x.task_run) if x.task_run else None, pid=x.pid, host=x.host,
                   log_file=x.log_file, command=list(x.command), started=x.started, exit_code=x.exit_code,
                   ended=x.ended, state=x.state)


@strawberry.type(description="A flow run.")
class Run:
    id: strawberry.ID
    flow: str
    flow_path: str = strawberry.field(description="Where the flow is imported from (module:qualname or file.py:name).")
    state: State
    params: JSON = strawberry.field(description="The flow's parameters, in canonical JSON.")
    params_display: JSON = strawberry.field(description="The flow's parameters as the user wrote them.")
    image_tag: str | None = strawberry.field(description="Content tag of the image the run's tasks ran in (pins code).")
    executor: str | None
    created: float
    started: float | None
    ended: float | None
    duration: float | None = strawberry.field(description="Seconds from start to end (to now while running).")
    tags: list[str]
    error: str | None
    traceback: str | None
    parent_run: str | None = strawberry.field(description="The run this one is a subflow of.")
    resumed_from: str | None
    replay_of: str | None
    host: str | None
    pid: int | None = strawberry.field(description="The driver process on `host`.")
    result_ref: str | None
    extra: JSON

    @strawberry.field(description="Task runs by state (batched across runs: one store read per request).")
    async def counts_by_state(self, info: Info) -> list[StateCount]:
        return counts_list(await info.context.loaders.counts.load(str(self.id)))

    @strawberry.field(description="What the run used and its estimated cost, per task (outliers first).")
    async def usage(self, info: Info) -> RunUsage:
        from gflow.usage import summarize

        trs = await info.context.call(info.context.store.task_runs, str(self.id))
        prices = info.context.state.prices
        total, tasks = summarize(trs, prices)
        return RunUsage(total=UsageGroup.of(total), tasks=[UsageGroup.of(t) for t in tasks],
                        currency=prices.currency if prices else None)

    @strawberry.field(description="Number of task runs.")
    async def task_run_count(self, info: Info) -> int:
        return sum((await info.context.loaders.counts.load(str(self.id))).values())

    @strawberry.field(description="Seq of the run's newest event: subscribe to runEvents with after = this.")
    async def last_event_seq(self, info: Info) -> int:
        ctx = info.context
        return await ctx.call(L.last_event_seq, ctx.store, str(self.id))

    @strawberry.field(description="The error cut to `head` + `tail` characters (for very long errors).")
    def error_excerpt(self, head: int = 4096, tail: int = 4096) -> TextExcerpt | None:
        _excerpt_args(head, tail)
        return TextExcerpt.of(D.excerpt(self.error, head, tail))

    @strawberry.field(description="The traceback cut to `head` + `tail` characters (for very long ones).")
    def traceback_excerpt(self, head: int = 8192, tail: int = 57344) -> TextExcerpt | None:
        _excerpt_args(head, tail)
        return TextExcerpt.of(D.excerpt(self.traceback, head, tail))

    @strawberry.field(description="Runs resumed or replayed from this one, and its subflows, oldest first.")
    async def derived_runs(self, info: Info) -> list[Run]:
        ctx = info.context
        recs = await ctx.call(ctx.store.derived_runs, str(self.id))
        return [Run.of(r) for r in recs]

    @strawberry.field(description="Drivers this server started from this run (retryTask, replayRun), oldest first.")
    def launches(self, info: Info) -> list[DriverLaunch]:
        return [DriverLaunch.of(x) for x in info.context.state.drivers.of_source(str(self.id))]

    @strawberry.field(description="The driver this server started to make this run, if it did.")
    def launch(self, info: Info) -> DriverLaunch | None:
        x = info.context.state.drivers.get(str(self.id))
        return DriverLaunch.of(x) if x is not None else None

    @classmethod
    def of(cls, r: RunRecord) -> Run:
        return cls(id=strawberry.ID(r.id), flow=r.flow, flow_path=r.flow_path, state=r.state,
                   params=L.decode_json(r.params), params_display=D.display_params(r.params), image_tag=r.image_tag,
                   executor=r.executor, created=r.created, started=r.started, ended=r.ended, duration=r.duration,
                   tags=list(r.tags), error=r.error, traceback=r.traceback, parent_run=r.parent_run,
                   resumed_from=r.resumed_from, replay_of=r.replay_of, host=r.host, pid=r.pid,
                   result_ref=r.result_ref, extra=r.extra)  # type: ignore[arg-type]


@strawberry.type(description="One entry of a run's event log: a state transition of the run or of one task run.")
class RunEvent:
    seq: int = strawberry.field(description="Position in the event log; increases, with gaps (the log is shared).")
    run_id: strawberry.ID
    task_run_id: strawberry.ID | None = strawberry.field(description="Null for the run's own transitions.")
    state: State
    attempt: int
    ts: float
    message: str | None = strawberry.field(description="The event's message (an error): its first line, at most "
                                                       "2,000 characters; taskRun.error has all of it.")

    @classmethod
    def of(cls, e: Event) -> RunEvent:
        return cls(seq=e.seq, run_id=strawberry.ID(e.run_id),
                   task_run_id=strawberry.ID(e.task_run_id) if e.task_run_id else None, state=e.state,
                   attempt=e.attempt, ts=e.ts, message=D.first_line(e.message, 2000))


@strawberry.type(description="One attempt of a task run, from its events.")
class Attempt:
    attempt: int
    state: State = strawberry.field(description="The attempt's last state (RETRYING when another followed).")
    queued: float | None
    started: float | None
    ended: float | None
    message: str | None
    error_type: str | None = strawberry.field(default=None, description="How the attempt failed, by gflow error "
                                              "type (OutOfMemory, Preempted, ValueError ...); null if it did not.")
    asked: str | None = strawberry.field(default=None, description="The resources the attempt asked for where the "
                                         "call set memory or spot ('memory=128Mi spot'): escalations show here.")
    wall_seconds: float | None = strawberry.field(default=None, description="Measured by the worker (docs/usage.md); "
                                                  "null where the attempt recorded no usage.")
    cpu_seconds: float | None = strawberry.field(default=None, description="CPU time: the thread's on local threads "
                                                 "and Dask, the process's elsewhere.")
    peak_memory_bytes: float | None = strawberry.field(default=None, description="Peak RSS during the attempt (on "
                                                       "threads: the process's peak growth).")
    gpu_peak_memory_bytes: float | None = strawberry.field(default=None, description="Peak GPU memory used (NVML); "
                                                           "null where no GPU was seen.")
    gpu_utilization: int | None = strawberry.field(default=None, description="Peak GPU utilization, percent.")
    requested_memory_bytes: float | None = strawberry.field(default=None, description="The memory it asked for.")
    requested_cpu: float | None = strawberry.field(default=None, description="The CPUs it asked for.")
    cost: float | None = strawberry.field(default=None, description="Estimated cost by the server profile's price "
                                          "table; null without one.")


def with_usage(attempts: list[Attempt], info: Any, last: int, prices: Any) -> list[Attempt]:
    """``attempts`` with the usage each recorded (a task run's ``info``) and its estimated cost."""
    from gflow.usage import attempt_cost, attempt_usages

    got = attempt_usages(info, last)
    for a in attempts:
        u = got.get(a.attempt)
        if not u:
            continue
        a.wall_seconds, a.cpu_seconds = u.get("wall_seconds"), u.get("cpu_seconds")
        a.peak_memory_bytes, a.gpu_peak_memory_bytes = u.get("peak_memory_bytes"), u.get("gpu_peak_memory_bytes")
        a.gpu_utilization = u.get("gpu_utilization")
        req = u.get("requested") or {}
        a.requested_memory_bytes, a.requested_cpu = req.get("memory_bytes"), req.get("cpu")
        a.cost = attempt_cost(u, prices)
    return attempts


@strawberry.type(description="What a group of task runs used (one task's calls, a map's elements, or the run).")
class UsageGroup:
    name: str
    calls: int
    measured: int = strawberry.field(description="Calls whose last attempt recorded usage.")
    is_map: bool
    cpu_seconds: float
    wall_seconds: float
    peak_memory_bytes: float = strawberry.field(description="The largest peak among the calls.")
    requested_memory_bytes: float | None
    gpu_peak_memory_bytes: float | None
    memory_ratio: float | None = strawberry.field(description="Peak used / requested memory.")
    cost: float | None = strawberry.field(description="Estimated, every attempt; null without a price table.")

    @classmethod
    def of(cls, s: Any) -> UsageGroup:
        return cls(name=s.name, calls=s.calls, measured=s.measured, is_map=s.is_map, cpu_seconds=s.cpu_seconds,
                   wall_seconds=s.wall_seconds, peak_memory_bytes=s.peak_memory_bytes,
                   requested_memory_bytes=s.requested_memory_bytes, gpu_peak_memory_bytes=s.gpu_peak_memory_bytes,
                   memory_ratio=s.memory_ratio, cost=s.cost)


@strawberry.type(description="A run's usage and estimated cost: the total and one group per task, outliers first "
                             "(peak memory furthest from what was asked, then CPU seconds).")
class RunUsage:
    total: UsageGroup
    tasks: list[UsageGroup]
    currency: str | None = strawberry.field(description="The price table's currency; null without one.")


def attempts_of(events: list[Event]) -> list[Attempt]:
    by: dict[int, Attempt] = {}
    for e in events:
        a = by.get(e.attempt)
        if a is None:
            a = by[e.attempt] = Attempt(attempt=e.attempt, state=e.state, queued=None, started=None, ended=None,
                                        message=None)
        a.state = e.state
        if e.state in (State.PENDING, State.QUEUED) and a.queued is None:
            a.queued = e.ts
        elif e.state is State.RUNNING:
            a.started = e.ts
        elif e.state in TERMINAL or e.state is State.RETRYING:
            a.ended = e.ts
        asked = asked_of(e.message)
        if asked is not None:
            a.asked = asked
        elif e.message:
            a.message = D.first_line(e.message, 2000)
            if e.state is State.RETRYING or e.state is State.FAILED:
                a.error_type = error_type_of(e.message)
    return [by[k] for k in sorted(by)]


@strawberry.type(description="Where a task run's logs are. Today: the run's event log (transitions, errors).")
class LogsLocation:
    kind: str = strawberry.field(description="'event-log': the store's event log; task stdout is not captured yet.")
    run_id: strawberry.ID
    task_run_id: strawberry.ID
    command: str = strawberry.field(description="The CLI command that prints them.")


@strawberry.type(description="The gflow objects a task run read and produced, by content id.")
class TaskRunObjects:
    inputs: list[str]
    outputs: list[str]


@strawberry.type(description="One call of a task inside a run (with all its attempts).")
class TaskRun:
    id: strawberry.ID
    run_id: strawberry.ID
    task: str = strawberry.field(description="Task identity (module:qualname).")
    name: str
    state: State
    attempt: int = strawberry.field(description="The current (last) attempt number, from 1.")
    cache_key: str | None
    created: float | None
    started: float | None
    ended: float | None
    duration: float | None
    error: str | None
    traceback: str | None
    result_ref: str | None = strawberry.field(description="Content address of the result in the artifact store.")
    result_inline: str | None = strawberry.field(description="Small results, as canonical JSON.")
    executor_handle: str | None = strawberry.field(description="The executor's handle (job id, future key, ...).")
    upstream_ids: list[strawberry.ID] = strawberry.field(description="Task runs whose results this one took.")
    map_index: int | None

    info_: strawberry.Private[Any] = None

    @strawberry.field(description="Why this task run still waits on its backend while it is QUEUED (`Slurm: "
                                  "ReqNodeNotAvail: ...`), as the executor last reported it; null otherwise.")
    async def pending_reason(self, info: Info) -> str | None:
        if self.state is not State.QUEUED:
            return None
        from gflow.flows.pending import reason_of, shown_reason

        row = await info.context.call(reason_of, info.context.store, str(self.run_id), str(self.id))
        return shown_reason(row, self.state.value, self.attempt)

    @strawberry.field(description="Attempts with their timings (event log) and usage (measured by the worker).")
    async def attempts(self, info: Info) -> list[Attempt]:
        got = attempts_of(await info.context.loaders.task_events.load((str(self.run_id), str(self.id))))
        return with_usage(got, self.info_, self.attempt, info.context.state.prices)

    @strawberry.field(description="Estimated cost of all its attempts (the server profile's price table).")
    def cost(self, info: Info) -> float | None:
        from gflow.usage import task_run_cost

        return task_run_cost(self.info_, self.attempt, info.context.state.prices)

    @strawberry.field(description="This task run's events, oldest first.")
    async def events(self, info: Info) -> list[RunEvent]:
        return [RunEvent.of(e) for e in await info.context.loaders.task_events.load((str(self.run_id), str(self.id)))]

    @strawberry.field
    def logs(self) -> LogsLocation:
        return LogsLocation(kind="event-log", run_id=self.run_id, task_run_id=self.id,
                            command=f"gflow logs {self.run_id} --task-run {self.id}")

    @strawberry.field(description="The error cut to `head` + `tail` characters.")
    def error_excerpt(self, head: int = 4096, tail: int = 4096) -> TextExcerpt | None:
        _excerpt_args(head, tail)
        return TextExcerpt.of(D.excerpt(self.error, head, tail))

    @strawberry.field(description="The traceback cut to `head` + `tail` characters (a 5 MB traceback stays "
                                  "readable; ask for `traceback` to get all of it).")
    def traceback_excerpt(self, head: int = 8192, tail: int = 57344) -> TextExcerpt | None:
        _excerpt_args(head, tail)
        return TextExcerpt.of(D.excerpt(self.traceback, head, tail))

    @strawberry.field(description="The result as the user wrote it, with the gflow objects in it (from the store, "
                                  "or from the artifact store when the server has one and the result is not inline).")
    async def output(self, info: Info) -> ValueView | None:
        if self.result_inline is not None:
            return ValueView.of(D.value_info(self.result_inline, "inline"))
        arts = info.context.state.artifacts
        if self.result_ref is None or arts is None:
            return None
        ctx = info.context
        data = await ctx.call(arts.get, self.result_ref)
        return ValueView.of(D.value_info(data.decode("utf-8", "replace"), "artifact"))

    @strawberry.field(description="The task runs whose results this one took (its inputs that came from tasks).")
    async def upstream(self, info: Info) -> list[TaskRun]:
        found = await info.context.call(L.task_runs_many, info.context.store, [str(u) for u in self.upstream_ids])
        return [TaskRun.of(t) for t in (found.get(str(u)) for u in self.upstream_ids) if t is not None]

    @strawberry.field(description="Content ids of the gflow objects (Protein, Design, ...) it read and produced.")
    async def objects(self, info: Info) -> TaskRunObjects:
        got = await info.context.loaders.objects.load(str(self.id))
        return TaskRunObjects(inputs=got["inputs"], outputs=got["outputs"])

    @strawberry.field(description="The run this task run belongs to.")
    async def run(self, info: Info) -> Run:
        rec = await info.context.loaders.runs.load(str(self.run_id))
        if rec is None:
            raise gql_error(f"run {self.run_id!r} of task run {self.id!r} is missing", NOT_FOUND)
        return Run.of(rec)

    @classmethod
    def of(cls, t: TaskRunRecord) -> TaskRun:
        dur = (t.ended - t.started) if t.ended is not None and t.started is not None else None
        return cls(id=strawberry.ID(t.id), run_id=strawberry.ID(t.run_id), task=t.task, name=t.name, state=t.state,
                   attempt=t.attempt, cache_key=t.key, created=t.created, started=t.started, ended=t.ended,
                   duration=dur, error=t.error, traceback=t.traceback, result_ref=t.result_ref,
                   result_inline=t.result_inline, executor_handle=t.handle,
                   upstream_ids=[strawberry.ID(u) for u in t.upstream], map_index=t.map_index, info_=t.info)


@strawberry.type(description="A page of runs, newest first.")
class RunPage:
    items: list[Run]
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page; null on the last.")
    has_next_page: bool


@strawberry.type(description="A page of task runs, in creation order.")
class TaskRunPage:
    items: list[TaskRun]
    next_cursor: str | None
    has_next_page: bool


@strawberry.type(description="A page of a run's event log, oldest first (the polling alternative to runEvents).")
class EventPage:
    items: list[RunEvent]
    last_seq: int = strawberry.field(description="Seq of the last event on the page (or `after` when empty).")
    has_more: bool


@strawberry.type(description="A data-flow edge: `downstream` took the result of `upstream`.")
class LineageEdge:
    upstream: strawberry.ID
    downstream: strawberry.ID


@strawberry.type(description="Task runs around one task run, following recorded upstream lists.")
class Lineage:
    task_run: TaskRun
    upstream: list[TaskRun] = strawberry.field(description="Ancestors up to `depth` hops, nearest first.")
    downstream: list[TaskRun] = strawberry.field(description="Descendants in the same run, up to `depth` hops.")
    edges: list[LineageEdge]
    truncated: bool = strawberry.field(description="True when the node limit cut the walk short.")


@strawberry.type(description="Where a gflow object (by content id) came from and where it went.")
class ObjectLineage:
    content_id: str
    produced_by: list[TaskRun] = strawberry.field(description="Task runs whose result held the object.")
    inputs: list[str] = strawberry.field(description="Content ids of the objects those task runs read.")
    consumed_by: list[TaskRun] = strawberry.field(description="Task runs that read the object.")


@strawberry.type(description="A page of a named table's rows (written by flows with gflow.tables.record).")
class TableRowsPage:
    items: list[JSON] = strawberry.field(description="The rows as JSON objects, with `_run_id` (who wrote it).")
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page; null on the last.")
    has_next_page: bool
    rows: list[JSON] = strawberry.field(description="The same rows as `items` (the older name).",
                                        deprecation_reason="use items, as on every other list")
    end_cursor: str | None = strawberry.field(description="Pass as `after` for the next page (also on the last).",
                                              deprecation_reason="use nextCursor, as on every other list")


@strawberry.type(description="One precalculated prediction (the precalc example's `predictions` table).")
class Prediction:
    key: str
    model: str
    score: float
    length: int | None
    run_id: str | None


@strawberry.type(description="A task run that read or produced a registered object, with its run's id and tags.")
class RegistryUse:
    task_run: TaskRun
    run_id: strawberry.ID
    run_tags: list[str]
    role: str = strawberry.field(description="'produced' or 'read'.")


@strawberry.type(description="Every use of the objects of one kind with one registry key (a molecule's canonical "
                             "SMILES), across runs, whatever their names.")
class RegistryEntry:
    kind: str
    key: str
    uses: list[RegistryUse]


@strawberry.type
class CancelResult:
    run: Run
    unfinished_task_runs: int = strawberry.field(
        description="Task runs not finished when the cancel was recorded: the run's driver cancels them within "
                    "about a second (or they were marked CANCELLED here when the driver is gone).")


@strawberry.type(description="Task runs of one task in a run (a map of 10,000 elements is one group).")
class TaskGroup:
    key: str = strawberry.field(description="The task's identity (module:qualname); groups are keyed by it.")
    index: int = strawberry.field(description="The group's index in the overview's `rows.g` column.")
    task: str
    name: str
    total: int
    done: int = strawberry.field(description="Task runs in a terminal state.")
    counts_by_state: list[StateCount]
    is_map: bool = strawberry.field(description="True when its task runs are elements of a map.")
    first_created: float | None
    started: float | None
    ended: float | None
    median_duration: float | None
    p95_duration: float | None
    max_duration: float | None


@strawberry.type(description="Data flow between task groups: `count` task-run pairs where one of `target` took a "
                             "result of one of `source`.")
class GroupEdge:
    source: str
    target: str
    count: int


@strawberry.type(description="A run at a glance: task groups, the edges between them, and every task run as "
                             "compact columns (see docs/server.md).")
class RunOverview:
    run: Run
    groups: list[TaskGroup]
    edges: list[GroupEdge]
    rows: JSON = strawberry.field(description="Columns of the first `maxRows` task runs, in creation order.")
    row_count: int = strawberry.field(description="Rows in `rows`.")
    task_run_count: int
    truncated: bool = strawberry.field(description="True when the run has more task runs than `maxRows`.")
    last_event_seq: int = strawberry.field(description="Read before the task runs: subscribe with after = this.")
    last_row_id: strawberry.ID | None = strawberry.field(
        description="The last task run in `rows`: taskRunRows(afterId:) continues from it.")


@strawberry.type(description="Columns of task runs (the overview's `rows` format).")
class RowsPage:
    rows: JSON
    count: int
    last_id: strawberry.ID | None = strawberry.field(description="The last task run on the page.")
    has_more: bool


def group_view(g: Any) -> TaskGroup:
    med, p95, mx = g.duration_stats()
    return TaskGroup(key=g.key, index=g.index, task=g.task, name=g.name, total=g.total, done=g.done,
                     counts_by_state=counts_list(g.counts), is_map=g.is_map, first_created=g.first_created,
                     started=g.started, ended=g.ended, median_duration=med, p95_duration=p95, max_duration=mx)
