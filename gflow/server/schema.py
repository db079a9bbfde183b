"""The GraphQL schema: runs, task runs, lineage, cancel/retry/replay, and live run events.

Pagination is cursor-based with one small shape for every list: ``{items, nextCursor, hasNextPage}``.
Pass ``nextCursor`` back as ``after`` to get the next page; it is null on the last page. Cursors
are opaque strings. Timestamps are Unix epoch seconds (floats); durations are seconds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, ParserCache, QueryDepthLimiter, ValidationCache
from strawberry.scalars import JSON
from strawberry.types import Info

from gflow.server import loaders as L
from gflow.server.auth import Role
from gflow.server.events import SlowSubscriber
from gflow.states import RANK, TERMINAL, State
from gflow.store import Event, RunRecord, TaskRunRecord

strawberry.enum(State, name="State", description="A run's or task run's state.")  # registers gflow's own enum

NOT_FOUND, BAD_INPUT, CONFLICT, NOT_AVAILABLE = "NOT_FOUND", "BAD_USER_INPUT", "CONFLICT", "NOT_AVAILABLE"
UNAUTHENTICATED, FORBIDDEN = "UNAUTHENTICATED", "FORBIDDEN"


def gql_error(message: str, code: str, **extra: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code, **extra})


# -- output types -----------------------------------------------------------------------------------

@strawberry.type(description="How many task runs of a run are in one state.")
class StateCount:
    state: State
    count: int


def _counts(counts: dict[str, int]) -> list[StateCount]:
    return [StateCount(state=State(s), count=n) for s, n in sorted(counts.items(), key=lambda kv: (RANK[State(kv[0])],
                                                                                                  kv[0]))]


@strawberry.type(description="A flow run.")
class Run:
    id: strawberry.ID
    flow: str
    flow_path: str = strawberry.field(description="Where the flow is imported from (module:qualname or file.py:name).")
    state: State
    params: JSON = strawberry.field(description="The flow's parameters, in canonical JSON.")
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
        return _counts(await info.context.loaders.counts.load(str(self.id)))

    @strawberry.field(description="Number of task runs.")
    async def task_run_count(self, info: Info) -> int:
        return sum((await info.context.loaders.counts.load(str(self.id))).values())

    @strawberry.field(description="Seq of the run's newest event: subscribe to runEvents with after = this.")
    async def last_event_seq(self, info: Info) -> int:
        ctx = info.context
        return await ctx.call(L.last_event_seq, ctx.store, str(self.id))

    @classmethod
    def of(cls, r: RunRecord) -> Run:
        return cls(id=strawberry.ID(r.id), flow=r.flow, flow_path=r.flow_path, state=r.state,
                   params=L.decode_json(r.params), image_tag=r.image_tag, executor=r.executor, created=r.created,
                   started=r.started, ended=r.ended, duration=r.duration, tags=list(r.tags), error=r.error,
                   traceback=r.traceback, parent_run=r.parent_run, resumed_from=r.resumed_from, replay_of=r.replay_of,
                   host=r.host, pid=r.pid, result_ref=r.result_ref, extra=r.extra)  # type: ignore[arg-type]


@strawberry.type(description="One entry of a run's event log: a state transition of the run or of one task run.")
class RunEvent:
    seq: int = strawberry.field(description="Position in the event log; increases, with gaps (the log is shared).")
    run_id: strawberry.ID
    task_run_id: strawberry.ID | None = strawberry.field(description="Null for the run's own transitions.")
    state: State
    attempt: int
    ts: float
    message: str | None

    @classmethod
    def of(cls, e: Event) -> RunEvent:
        return cls(seq=e.seq, run_id=strawberry.ID(e.run_id),
                   task_run_id=strawberry.ID(e.task_run_id) if e.task_run_id else None, state=e.state,
                   attempt=e.attempt, ts=e.ts, message=e.message)


@strawberry.type(description="One attempt of a task run, from its events.")
class Attempt:
    attempt: int
    state: State = strawberry.field(description="The attempt's last state (RETRYING when another followed).")
    queued: float | None
    started: float | None
    ended: float | None
    message: str | None


def _attempts(events: list[Event]) -> list[Attempt]:
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
        if e.message:
            a.message = e.message
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

    @strawberry.field(description="Attempts with their timings, from the event log.")
    async def attempts(self, info: Info) -> list[Attempt]:
        return _attempts(await info.context.loaders.task_events.load((str(self.run_id), str(self.id))))

    @strawberry.field(description="This task run's events, oldest first.")
    async def events(self, info: Info) -> list[RunEvent]:
        return [RunEvent.of(e) for e in await info.context.loaders.task_events.load((str(self.run_id), str(self.id)))]

    @strawberry.field
    def logs(self) -> LogsLocation:
        return LogsLocation(kind="event-log", run_id=self.run_id, task_run_id=self.id,
                            command=f"gflow logs {self.run_id} --task-run {self.id}")

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
                   upstream_ids=[strawberry.ID(u) for u in t.upstream], map_index=t.map_index)


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


@strawberry.type
class CancelResult:
    run: Run
    unfinished_task_runs: int = strawberry.field(
        description="Task runs not finished when the cancel was recorded: the run's driver cancels them within "
                    "about a second (or they were marked CANCELLED here when the driver is gone).")


# -- helpers --------------------------------------------------------------------------------------------

def _encode_cursor(kind: str, value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, value]).encode()).decode()


def _decode_cursor(kind: str, cursor: str) -> Any:
    try:
        k, value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if k == kind:
            return value
    except (ValueError, TypeError):
        pass
    raise gql_error(f"malformed cursor {cursor[:60]!r}: pass back a nextCursor from this list's last page", BAD_INPUT)


def _page_size(info: Info, first: int) -> int:
    limit = info.context.limits.max_page_size
    if first < 1 or first > limit:
        raise gql_error(f"first must be between 1 and {limit} (got {first})", BAD_INPUT, maxPageSize=limit)
    return first


async def _get_run(info: Info, run_id: str) -> RunRecord:
    ctx = info.context
    return await ctx.call(ctx.store.get_run, run_id)


def require_write(info: Info, what: str) -> None:
    """Mutations need a write token; sets the HTTP status too (401 none given, 403 a read token)."""
    ctx = info.context
    if ctx.role >= Role.WRITE:
        return
    if not ctx.auth.write_tokens:
        code, status = FORBIDDEN, 403
        msg = f"{what} needs a write token, and this server has none configured (--token-write)"
    elif ctx.role == Role.ANONYMOUS:
        code, status, msg = UNAUTHENTICATED, 401, f"{what} needs a write token: send 'Authorization: Bearer <token>'"
    else:
        code, status, msg = FORBIDDEN, 403, f"{what} needs a write token; the token given only allows reads"
    ctx.set_status(status)
    raise gql_error(msg, code)


def _cancel(store: Any, run_id: str, reason: str | None) -> tuple[RunRecord, int]:
    """Cancel through the store's shared ``cancel_run`` (the same as ``gflow runs cancel``)."""
    from gflow.errors import InvalidTransition
    from gflow.store import cancel_run

    rec = store.get_run(run_id)
    if rec.state in TERMINAL:
        raise gql_error(f"run {rec.id} is already {rec.state.value}; nothing to cancel", CONFLICT)
    unfinished = sum(n for s, n in store.counts(rec.id).items() if State(s) not in TERMINAL)
    try:
        rec = cancel_run(store, rec.id, "cancelRun via the GraphQL API" + (f": {reason}" if reason else ""))
    except InvalidTransition:
        rec = store.get_run(rec.id)
        raise gql_error(f"run {rec.id} finished ({rec.state.value}) while it was being cancelled", CONFLICT) from None
    return rec, unfinished


# -- root types -----------------------------------------------------------------------------------------

@strawberry.type
class Query:
    @strawberry.field(description="Runs, newest first, filtered; cursor-paginated.")
    async def runs(self, info: Info, flow: str | None = None, state: State | None = None,
                   tag: str | None = None, since: float | None = None, until: float | None = None,
                   first: int = 50, after: str | None = None) -> RunPage:
        n = _page_size(info, first)
        before = tuple(_decode_cursor("runs", after)) if after else None
        ctx = info.context
        recs = await ctx.call(ctx.store.list_runs, flow=flow, state=state, tag=tag, since=since, until=until,
                              limit=n + 1, before=before)
        more = len(recs) > n
        recs = recs[:n]
        cursor = _encode_cursor("runs", [recs[-1].created, recs[-1].id]) if more else None
        return RunPage(items=[Run.of(r) for r in recs], next_cursor=cursor, has_next_page=more)

    @strawberry.field(description="One run by id (or a unique prefix of it).")
    async def run(self, info: Info, id: strawberry.ID) -> Run:
        return Run.of(await _get_run(info, str(id)))

    @strawberry.field(description="Task runs of a run in creation order, filtered; cursor-paginated.")
    async def task_runs(self, info: Info, run_id: strawberry.ID, task: str | None = None,
                        state: State | None = None, first: int = 100, after: str | None = None) -> TaskRunPage:
        n = _page_size(info, first)
        after_id = _decode_cursor("task_runs", after) if after else None
        ctx = info.context
        run = await _get_run(info, str(run_id))
        recs = await ctx.call(ctx.store.task_runs, run.id, state=state, task=task, limit=n + 1, after=after_id)
        more = len(recs) > n
        recs = recs[:n]
        cursor = _encode_cursor("task_runs", recs[-1].id) if more else None
        return TaskRunPage(items=[TaskRun.of(t) for t in recs], next_cursor=cursor, has_next_page=more)

    @strawberry.field(description="One task run by id.")
    async def task_run(self, info: Info, id: strawberry.ID) -> TaskRun:
        ctx = info.context
        return TaskRun.of(await ctx.call(ctx.store.get_task_run, str(id)))

    @strawberry.field(description="Upstream and downstream task runs of a task run, from the recorded upstream "
                                  "lists (downstream: within the same run only).")
    async def lineage(self, info: Info, task_run_id: strawberry.ID, depth: int = 1) -> Lineage:
        ctx = info.context
        limits = ctx.limits
        if depth < 1 or depth > limits.lineage_max_depth:
            raise gql_error(f"depth must be between 1 and {limits.lineage_max_depth} (got {depth})", BAD_INPUT)
        root = await ctx.call(ctx.store.get_task_run, str(task_run_id))
        seen = {root.id}
        edges: list[LineageEdge] = []
        truncated = False
        ups: list[TaskRunRecord] = []
        frontier = [root]
        for _ in range(depth):
            want = [(u, t.id) for t in frontier for u in t.upstream]
            found = await ctx.call(L.task_runs_many, ctx.store, [u for u, _ in want])
            frontier = []
            for u, d in want:
                edges.append(LineageEdge(upstream=strawberry.ID(u), downstream=strawberry.ID(d)))
                rec = found.get(u)
                if rec is not None and u not in seen:
                    if len(seen) >= limits.lineage_max_nodes:
                        truncated = True
                        continue
                    seen.add(u)
                    ups.append(rec)
                    frontier.append(rec)
        downs: list[TaskRunRecord] = []
        ids = [root.id]
        for _ in range(depth):
            found_down = await ctx.call(L.downstream_many, ctx.store, root.run_id, ids)
            new = []
            for up, dl in found_down.items():
                for d in dl:
                    edges.append(LineageEdge(upstream=strawberry.ID(up), downstream=strawberry.ID(d)))
                    if d not in seen:
                        if len(seen) >= limits.lineage_max_nodes:
                            truncated = True
                            continue
                        seen.add(d)
                        new.append(d)
            recs = await ctx.call(L.task_runs_many, ctx.store, new)
            downs += [recs[d] for d in new if recs.get(d) is not None]
            ids = new
            if not ids:
                break
        uniq_edges = list({(e.upstream, e.downstream): e for e in edges}.values())
        return Lineage(task_run=TaskRun.of(root), upstream=[TaskRun.of(t) for t in ups],
                       downstream=[TaskRun.of(t) for t in downs], edges=uniq_edges, truncated=truncated)


    @strawberry.field(description="Lineage of a gflow object by content id: the task runs that produced it (and "
                                  "from which objects) and those that read it.")
    async def object_lineage(self, info: Info, content_id: str) -> ObjectLineage:
        ctx = info.context
        got = await ctx.call(ctx.store.lineage, content_id)
        return ObjectLineage(content_id=content_id, produced_by=[TaskRun.of(t) for t in got["produced_by"]],
                             inputs=list(got["inputs"]), consumed_by=[TaskRun.of(t) for t in got["consumed_by"]])


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Mark a run CANCELLED (as `gflow runs cancel`): its driver notices within about "
                                     "a second and cancels its calls.")
    async def cancel_run(self, info: Info, id: strawberry.ID, reason: str | None = None) -> CancelResult:
        require_write(info, "cancelRun")
        ctx = info.context
        rec, n = await ctx.call(_cancel, ctx.store, str(id), reason)
        return CancelResult(run=Run.of(rec), unfinished_task_runs=n)

    @strawberry.mutation(description="Not available yet: rerun a failed run with `gflow resume RUN` instead.")
    async def retry_task(self, info: Info, task_run_id: strawberry.ID) -> TaskRun:
        require_write(info, "retryTask")
        ctx = info.context
        t = await ctx.call(ctx.store.get_task_run, str(task_run_id))
        raise gql_error(f"retryTask is not available yet: the engine cannot take new work for run {t.run_id} from "
                        f"the server. Rerun the run with `gflow resume {t.run_id}` (finished tasks come from the "
                        "cache).", NOT_AVAILABLE)

    @strawberry.mutation(description="Not available yet: replay comes with images (a run's recorded image tag).")
    async def replay_run(self, info: Info, id: strawberry.ID) -> Run:
        require_write(info, "replayRun")
        rec = await _get_run(info, str(id))
        raise gql_error(f"replayRun is not available yet: replay (run {rec.id} again from its recorded image tag and "
                        "inputs) comes with gflow images; until then use `gflow resume` or run the flow again.",
                        NOT_AVAILABLE)


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The run's events with seq > `after`, oldest first, then live ones as they "
                                         "are recorded; completes after the run's own terminal event.")
    async def run_events(self, info: Info, run_id: strawberry.ID, after: int = 0) -> AsyncGenerator[RunEvent, None]:
        ctx = info.context
        rec = await _get_run(info, str(run_id))
        try:
            async for batch in ctx.hub.subscribe(rec.id, after):
                for e in batch:
                    yield RunEvent.of(e)
        except SlowSubscriber as e:
            raise gql_error(str(e), "SLOW_SUBSCRIBER") from None

    @strawberry.subscription(description="Like runEvents, in batches (one message per batch the server reads): "
                                         "the way to follow a run of thousands of task runs.")
    async def run_event_batches(self, info: Info, run_id: strawberry.ID,
                                after: int = 0) -> AsyncGenerator[list[RunEvent], None]:
        ctx = info.context
        rec = await _get_run(info, str(run_id))
        try:
            async for batch in ctx.hub.subscribe(rec.id, after):
                yield [RunEvent.of(e) for e in batch]
        except SlowSubscriber as e:
            raise gql_error(str(e), "SLOW_SUBSCRIBER") from None


@dataclass(frozen=True)
class Limits:
    """Server-side limits on what one request may ask for."""

    max_page_size: int = 500
    max_depth: int = 6
    max_aliases: int = 20
    max_tokens: int = 4000
    request_timeout: float = 10.0
    max_body_bytes: int = 256 * 1024
    lineage_max_depth: int = 5
    lineage_max_nodes: int = 1000
    poll_interval: float = 0.05
    store_threads: int = 8


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log only unexpected errors; bad queries, unknown ids and auth failures are the client's to read."""
        for error in errors:
            original = error.original_error
            if original is not None and not isinstance(original, GraphQLError):
                super().process_errors([error], execution_context)


def build_schema(limits: Limits = Limits()) -> strawberry.Schema:
    """The schema with its depth, alias and token limits (introspection is not depth-limited).

    Parsed and validated documents are cached (dashboards and clients repeat the same queries).
    """
    return _Schema(
        query=Query, mutation=Mutation, subscription=Subscription,
        extensions=[lambda: MaxTokensLimiter(limits.max_tokens), lambda: ParserCache(maxsize=256),
                    lambda: QueryDepthLimiter(max_depth=limits.max_depth), lambda: MaxAliasesLimiter(limits.max_aliases),
                    lambda: ValidationCache(maxsize=256)])
