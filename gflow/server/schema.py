"""The GraphQL schema: runs, task runs, lineage, the run overview, cancel/retry/replay, live run events.

Pagination is cursor-based with one small shape for every list: ``{items, nextCursor, hasNextPage}``.
Pass ``nextCursor`` back as ``after`` to get the next page; it is null on the last page. Cursors
are opaque strings. Timestamps are Unix epoch seconds (floats); durations are seconds.

Every error carries ``extensions.code``: ``BAD_USER_INPUT``, ``NOT_FOUND``, ``CONFLICT``,
``UNAUTHENTICATED``, ``FORBIDDEN``, ``DRIVER_FAILED``, ``STORE_UNAVAILABLE``, ``SLOW_SUBSCRIBER``,
``GRAPHQL_PARSE_FAILED``, ``GRAPHQL_VALIDATION_FAILED``, ``TIMEOUT`` or ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

import strawberry
from graphql import GraphQLError, ValidationContext, ValidationRule
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, ParserCache, QueryDepthLimiter, ValidationCache
from strawberry.scalars import JSON
from strawberry.types import Info

from gflow.server import loaders as L
from gflow.server import overview as O
from gflow.server.auth import Role
from gflow.server.events import SlowSubscriber, TooManySubscriptions
from gflow.server.guard import check_id, check_text, gql_error
from gflow.server.types import (
    BAD_INPUT,
    CONFLICT,
    FORBIDDEN,
    UNAUTHENTICATED,
    CancelResult,
    DriverLaunch,
    EventPage,
    GroupEdge,
    Lineage,
    LineageEdge,
    ObjectLineage,
    Prediction,
    RegistryEntry,
    RegistryUse,
    RowsPage,
    Run,
    RunEvent,
    RunOverview,
    RunPage,
    TableRowsPage,
    TaskRun,
    TaskRunPage,
    group_view,
)
from gflow.states import TERMINAL, State
from gflow.store import RunRecord, TaskRunRecord

log = logging.getLogger("gflow.server")

__all__ = ["Limits", "build_schema", "gql_error", "require_write"]


# -- helpers --------------------------------------------------------------------------------------------

def _encode_cursor(kind: str, value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, value]).encode()).decode()


def _decode_cursor(kind: str, cursor: str) -> Any:
    try:
        if len(cursor) <= 1000:
            k, value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            if k == kind:
                return value
    except (ValueError, TypeError):
        pass
    raise gql_error(f"malformed cursor {cursor[:60]!r}: pass back a nextCursor from this list's last page", BAD_INPUT)


def _task_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    value = _decode_cursor("task_runs", cursor)
    if not isinstance(value, str):
        raise gql_error("malformed cursor: pass back a nextCursor from this list's last page", BAD_INPUT)
    return check_id(value, "cursor")


def _page_size(info: Info, first: int, limit: int | None = None) -> int:
    limit = limit or info.context.limits.max_page_size
    if first < 1 or first > limit:
        raise gql_error(f"first must be between 1 and {limit} (got {first})", BAD_INPUT, maxPageSize=limit)
    return first


async def _get_run(info: Info, run_id: Any, what: str = "run id") -> RunRecord:
    ctx = info.context
    return await ctx.call(ctx.store.get_run, check_id(run_id, what))


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


def _still_running(rec: RunRecord) -> bool:
    """A run that has not ended and whose driver may still be alive."""
    from gflow.store import driver_alive

    return rec.state not in TERMINAL and driver_alive(rec) is not False


def _overview(store: Any, run_id: str, max_rows: int) -> tuple[RunRecord, O.Overview, int]:
    rec = store.get_run(run_id)
    seq = store.last_event_seq(rec.id)  # before the task runs: a subscriber from here misses nothing
    return rec, O.overview(rec.id, rec.created, store.task_run_summaries(rec.id), max_rows), seq


def _rows(store: Any, run_id: str, after: str | None,
          first: int) -> tuple[dict[str, Any], int, str | None, bool]:
    rec = store.get_run(run_id)
    recs: list[TaskRunRecord] = store.task_run_summaries(rec.id, limit=first + 1, after=after)
    more = len(recs) > first
    recs = recs[:first]
    return O.rows(rec.id, rec.created, recs), len(recs), (recs[-1].id if recs else after), more


def _timeline(store: Any, run_id: str, page: int = 10_000) -> dict[str, Any]:
    rec = store.get_run(run_id)
    queued: dict[str, float] = {}
    after = 0
    while True:
        events = store.events(rec.id, after=after, limit=page)
        queued.update(O.queue_times(rec.id, events))
        if len(events) < page:
            break
        after = events[-1].seq
    prefix = f"{rec.id}."
    ids = list(queued)
    return {"t0": rec.created, "prefix": prefix,
            "id": [i[len(prefix):] if i.startswith(prefix) else i for i in ids],
            "q": [int((queued[i] - rec.created) * 1e6) for i in ids]}


# -- root types -----------------------------------------------------------------------------------------

@strawberry.type
class Query:
    @strawberry.field(description="Runs, newest first, filtered; cursor-paginated.")
    async def runs(self, info: Info, flow: str | None = None, state: State | None = None,
                   tag: str | None = None, since: float | None = None, until: float | None = None,
                   first: int = 50, after: str | None = None) -> RunPage:
        n = _page_size(info, first)
        check_text(flow, "flow")
        check_text(tag, "tag")
        before = _decode_cursor("runs", after) if after else None
        if before is not None and not (isinstance(before, list) and len(before) == 2
                                       and isinstance(before[0], int | float) and isinstance(before[1], str)):
            raise gql_error("malformed cursor: pass back a nextCursor from this list's last page", BAD_INPUT)
        ctx = info.context
        recs = await ctx.call(ctx.store.list_runs, flow=flow, state=state, tag=tag, since=since, until=until,
                              limit=n + 1, before=tuple(before) if before else None)
        more = len(recs) > n
        recs = recs[:n]
        cursor = _encode_cursor("runs", [recs[-1].created, recs[-1].id]) if more else None
        return RunPage(items=[Run.of(r) for r in recs], next_cursor=cursor, has_next_page=more)

    @strawberry.field(description="One run by id (or a unique prefix of it).")
    async def run(self, info: Info, id: strawberry.ID) -> Run:
        return Run.of(await _get_run(info, id))

    @strawberry.field(description="Task runs of a run in creation order, filtered; cursor-paginated.")
    async def task_runs(self, info: Info, run_id: strawberry.ID, task: str | None = None,
                        state: State | None = None, first: int = 100, after: str | None = None) -> TaskRunPage:
        n = _page_size(info, first)
        check_text(task, "task")
        after_id = _task_cursor(after)
        ctx = info.context
        run = await _get_run(info, run_id)
        recs = await ctx.call(ctx.store.task_runs, run.id, state=state, task=task, limit=n + 1, after=after_id)
        more = len(recs) > n
        recs = recs[:n]
        cursor = _encode_cursor("task_runs", recs[-1].id) if more else None
        return TaskRunPage(items=[TaskRun.of(t) for t in recs], next_cursor=cursor, has_next_page=more)

    @strawberry.field(description="One task run by id.")
    async def task_run(self, info: Info, id: strawberry.ID) -> TaskRun:
        ctx = info.context
        return TaskRun.of(await ctx.call(ctx.store.get_task_run, check_id(id, "task run id")))

    @strawberry.field(description="A run at a glance for the dashboard: task groups (one per task; a map is one "
                                  "group), edges between groups, and its task runs as compact columns.")
    async def run_overview(self, info: Info, run_id: strawberry.ID, max_rows: int | None = None) -> RunOverview:
        ctx = info.context
        limit = ctx.limits.overview_max_rows
        rows = limit if max_rows is None else max_rows
        if not 0 <= rows <= limit:
            raise gql_error(f"maxRows must be between 0 and {limit} (got {rows})", BAD_INPUT)
        rec, ov, seq = await ctx.call(_overview, ctx.store, check_id(run_id, "run id"), rows)
        groups = sorted(ov.cols.groups.values(), key=lambda g: g.index)
        more = ov.total > rows
        return RunOverview(run=Run.of(rec), groups=[group_view(g) for g in groups],
                           edges=[GroupEdge(source=s, target=t, count=c) for (s, t), c in ov.edges.items()],
                           rows=ov.cols.payload(), row_count=len(ov.cols.cols["id"]), task_run_count=ov.total,
                           truncated=more, last_event_seq=seq,
                           last_row_id=strawberry.ID(ov.last_row) if ov.last_row else None)

    @strawberry.field(description="Task runs of a run created after task run `afterId` (or from the start), as "
                                  "compact columns like runOverview.rows: how the dashboard picks up task runs that "
                                  "appear live, and the rest of a run bigger than one overview.")
    async def task_run_rows(self, info: Info, run_id: strawberry.ID, after_id: strawberry.ID | None = None,
                            first: int = 10_000) -> RowsPage:
        ctx = info.context
        n = _page_size(info, first, ctx.limits.overview_max_rows)
        after = check_id(after_id, "afterId") if after_id is not None else None
        rows, count, last, more = await ctx.call(_rows, ctx.store, check_id(run_id, "run id"), after, n)
        return RowsPage(rows=rows, count=count, last_id=strawberry.ID(last) if last else None, has_more=more)

    @strawberry.field(description="When each task run's current attempt was QUEUED (microseconds after the run's "
                                  "creation, `t0`): `{t0, prefix, id: [...], q: [...]}`, for the timeline.")
    async def run_timeline(self, info: Info, run_id: strawberry.ID) -> JSON:
        ctx = info.context
        return await ctx.call(_timeline, ctx.store, check_id(run_id, "run id"))

    @strawberry.field(description="The run's events with seq > `after`, oldest first: what runEvents streams, "
                                  "for clients that poll.")
    async def run_events(self, info: Info, run_id: strawberry.ID, after: int = 0, first: int = 5000) -> EventPage:
        ctx = info.context
        n = _page_size(info, first, 10_000)
        if after < 0:
            raise gql_error(f"after must be 0 or more (got {after})", BAD_INPUT)
        rec = await _get_run(info, run_id)
        events = await ctx.call(ctx.store.events, rec.id, after=after, limit=n + 1)
        more = len(events) > n
        events = events[:n]
        return EventPage(items=[RunEvent.of(e) for e in events], last_seq=events[-1].seq if events else after,
                         has_more=more)

    @strawberry.field(description="Upstream and downstream task runs of a task run, from the recorded upstream "
                                  "lists (downstream: within the same run only).")
    async def lineage(self, info: Info, task_run_id: strawberry.ID, depth: int = 1) -> Lineage:
        ctx = info.context
        limits = ctx.limits
        if depth < 1 or depth > limits.lineage_max_depth:
            raise gql_error(f"depth must be between 1 and {limits.lineage_max_depth} (got {depth})", BAD_INPUT)
        root = await ctx.call(ctx.store.get_task_run, check_id(task_run_id, "task run id"))
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

    @strawberry.field(description="Rows of a named table (gflow.tables.record) whose fields equal `where`'s.")
    async def table_rows(self, info: Info, table: str, where: JSON | None = None, first: int = 100,
                         after: str | None = None) -> TableRowsPage:
        ctx = info.context
        check_text(table, "table", 200)
        if where is not None and (not isinstance(where, dict) or not all(
                isinstance(v, (str, int, float, bool)) for v in where.values())):
            raise gql_error("where must be an object of field names to strings or numbers", BAD_INPUT)
        first = _page_size(info, first, 1000)
        got = await ctx.call(ctx.store.get_rows, table, where, limit=first + 1, after=after)
        more = len(got) > first
        got = got[:first]
        end = got[-1]["_cursor"] if got else after
        return TableRowsPage(items=got, next_cursor=end if more else None, has_next_page=more, rows=got,
                             end_cursor=end)

    @strawberry.field(description="Precalculated predictions of `model` (its digest `sha256:...`, or its name as the "
                                  "precalc example records it in the `models` table), for the input `keys` (all of "
                                  "them when none are given, paged by `first`/`after`).")
    async def predictions(self, info: Info, model: str, keys: list[str] | None = None, first: int = 100,
                          after: str | None = None) -> list[Prediction]:
        ctx = info.context
        check_text(model, "model", 1000)
        if keys is not None and len(keys) > 1000:
            raise gql_error("at most 1000 keys per query", BAD_INPUT)
        first = _page_size(info, first, 1000)
        if not model.startswith("sha256:"):
            named = await ctx.call(ctx.store.get_rows, "models", {"name": model}, limit=1000)
            digests = list(dict.fromkeys(str(r.get("digest")) for r in named if r.get("digest")))
            if not digests:
                raise gql_error(f"no model named {model[:100]!r} is recorded (give its digest 'sha256:...' or a "
                                f"name from the `models` table)", BAD_INPUT)
            if len(digests) > 1:
                raise gql_error(f"{len(digests)} models are named {model[:100]!r}: give one digest of "
                                f"{', '.join(d[:19] + '...' for d in digests[:5])}", BAD_INPUT)
            model = digests[0]

        def fetch() -> list[dict[str, Any]]:
            if keys is None:
                return ctx.store.get_rows("predictions", {"model": model}, limit=first, after=after)
            out: list[dict[str, Any]] = []
            for k in keys:
                out += ctx.store.get_rows("predictions", {"model": model, "key": check_text(k, "key", 1000)}, limit=1)
            return out

        rows = await ctx.call(fetch)
        return [Prediction(key=r["key"], model=r["model"], score=float(r["score"]), length=r.get("length"),
                           run_id=r.get("_run_id")) for r in rows]

    @strawberry.field(description="A registry lookup across runs: every task run that produced or read an object "
                                  "of `kind` (e.g. 'molecule') with this key (a molecule's SMILES, in any "
                                  "spelling RDKit canonicalizes), with its run's tags.")
    async def registry(self, info: Info, kind: str, key: str) -> RegistryEntry:
        ctx = info.context
        check_text(kind, "kind", 100)
        check_text(key, "key", 10_000)
        canon, uses = await ctx.call(_registry, ctx.store, kind, key)
        return RegistryEntry(kind=kind.lower(), key=canon, uses=[
            RegistryUse(task_run=TaskRun.of(t), run_id=strawberry.ID(t.run_id), run_tags=list(r.tags) if r else [],
                        role=role) for t, r, role in uses])

    @strawberry.field(description="Everything that made an output, walked back (as `gflow lineage`): for a gflow "
                                  "object's content id, a key:KIND:KEY registry id or a task run id, every task run "
                                  "back through upstream and object-producer edges, with task, code version, image, "
                                  "model digests read and run: {root nodes edges models truncated}.")
    async def provenance(self, info: Info, id: str, max_nodes: int = 500) -> JSON:
        from gflow.lineage import walk

        ctx = info.context
        check_text(id, "id", 1000)
        if not 1 <= max_nodes <= ctx.limits.lineage_max_nodes:
            raise gql_error(f"maxNodes must be between 1 and {ctx.limits.lineage_max_nodes} (got {max_nodes})",
                            BAD_INPUT)
        graph = await ctx.call(walk, ctx.store, id, max_nodes)  # LineageNotFound: a GflowError, one line
        return cast(JSON, graph.to_json())

    @strawberry.field(description="Why the calls of `task` in run `runId` ran instead of coming from the cache (as "
                                  "`gflow cache explain`): the nearest earlier call and what differs.")
    async def cache_explain(self, info: Info, run_id: strawberry.ID, task: str) -> JSON:
        from gflow.explain import explain

        ctx = info.context
        check_text(task, "task", 1000)
        diffs = await ctx.call(explain, ctx.store, check_id(run_id, "run id"), task)  # ExplainError: one line
        return cast(JSON, [dict(d.to_json(), lines=d.lines()) for d in diffs])

    @strawberry.field(description="Lineage of a gflow object by content id: the task runs that produced it (and "
                                  "from which objects) and those that read it.")
    async def object_lineage(self, info: Info, content_id: str) -> ObjectLineage:
        ctx = info.context
        got = await ctx.call(ctx.store.lineage, check_id(content_id, "content id"))
        return ObjectLineage(content_id=content_id, produced_by=[TaskRun.of(t) for t in got["produced_by"]],
                             inputs=list(got["inputs"]), consumed_by=[TaskRun.of(t) for t in got["consumed_by"]])


def _registry(store: Any, kind: str, key: str) -> tuple[str, list[tuple[TaskRunRecord, RunRecord | None, str]]]:
    from gflow.store import registry_id

    if kind.lower() == "molecule":  # the same molecule however it was spelled
        try:
            from gflow.objects import Molecule

            key = Molecule(smiles=key).smiles
        except Exception:  # noqa: BLE001 - not a valid SMILES here: look it up as given
            pass
    got = store.lineage(registry_id(kind, key))
    uses = [(t, "produced") for t in got["produced_by"]] + [(t, "read") for t in got["consumed_by"]]
    runs = store.get_runs([t.run_id for t, _ in uses])
    return key, [(t, runs.get(t.run_id), role) for t, role in uses]


async def _launch(info: Info, kind: str, source: RunRecord, task_run: str | None) -> DriverLaunch:
    from gflow.flows import new_run_id

    ctx = info.context
    drivers = ctx.state.drivers
    launch = await ctx.call(drivers.start, kind, source.id, new_run_id(), task_run)

    def run_exists(run_id: str) -> bool:
        return ctx.store.get_runs([run_id]).get(run_id) is not None

    await ctx.call(drivers.wait_started, launch, run_exists)
    return DriverLaunch.of(launch)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Mark a run CANCELLED (as `gflow runs cancel`): its driver notices within about "
                                     "a second and cancels its calls.")
    async def cancel_run(self, info: Info, id: strawberry.ID, reason: str | None = None) -> CancelResult:
        require_write(info, "cancelRun")
        ctx = info.context
        check_text(reason, "reason")
        rec, n = await ctx.call(_cancel, ctx.store, check_id(id, "run id"), reason)
        return CancelResult(run=Run.of(rec), unfinished_task_runs=n)

    @strawberry.mutation(description="Run a FAILED or CANCELLED task run again, with what depends on it: the server "
                                     "starts `gflow resume RUN --run-id NEW` (every finished call is reused) and "
                                     "answers at once with the new run's id.")
    async def retry_task(self, info: Info, task_run_id: strawberry.ID) -> DriverLaunch:
        require_write(info, "retryTask")
        ctx = info.context
        t = await ctx.call(ctx.store.get_task_run, check_id(task_run_id, "task run id"))
        if t.state not in (State.FAILED, State.CANCELLED):
            raise gql_error(f"task run {t.id} is {t.state.value}; only a FAILED or CANCELLED task run can be retried",
                            CONFLICT)
        rec = await ctx.call(ctx.store.get_run, t.run_id)
        if rec.state is State.SUCCEEDED:
            raise gql_error(f"run {rec.id} SUCCEEDED; there is nothing to resume", CONFLICT)
        if _still_running(rec):
            raise gql_error(f"run {rec.id} is still {rec.state.value}; cancel it (cancelRun) or let it end, then retry",
                            CONFLICT)
        return await _launch(info, "resume", rec, t.id)

    @strawberry.mutation(description="Run a finished run again from its recorded image and inputs: the server starts "
                                     "`gflow replay RUN --run-id NEW` and answers at once with the new run's id.")
    async def replay_run(self, info: Info, id: strawberry.ID) -> DriverLaunch:
        require_write(info, "replayRun")
        rec = await _get_run(info, id)
        if not rec.image_tag:
            raise gql_error(f"run {rec.id} recorded no image tag (executor {rec.executor or 'local'!r}); only runs "
                            "made with an image executor (docker, aws-batch, volcano) can be replayed. Retry its "
                            "failed tasks or run the flow again instead.", BAD_INPUT)
        if _still_running(rec):
            raise gql_error(f"run {rec.id} is still {rec.state.value}; replay it once it has ended", CONFLICT)
        return await _launch(info, "replay", rec, None)


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The run's events with seq > `after`, oldest first, then live ones as they "
                                         "are recorded; completes after the run's own terminal event.")
    async def run_events(self, info: Info, run_id: strawberry.ID, after: int = 0) -> AsyncGenerator[RunEvent, None]:
        ctx = info.context
        rec = await _get_run(info, run_id)
        key = _hold_subscription(info)
        try:
            async for batch in ctx.hub.subscribe(rec.id, max(0, after)):
                for i, e in enumerate(batch):
                    if i and not i % 100:
                        await asyncio.sleep(0)  # a long batch must not starve the other requests on this loop
                    yield RunEvent.of(e)
        except SlowSubscriber as e:
            raise gql_error(str(e), "SLOW_SUBSCRIBER") from None
        finally:
            ctx.state.subscriptions.release(key)

    @strawberry.subscription(description="Like runEvents, in batches (one message per batch the server reads): "
                                         "the way to follow a run of thousands of task runs.")
    async def run_event_batches(self, info: Info, run_id: strawberry.ID,
                                after: int = 0) -> AsyncGenerator[list[RunEvent], None]:
        ctx = info.context
        rec = await _get_run(info, run_id)
        key = _hold_subscription(info)
        try:
            async for batch in ctx.hub.subscribe(rec.id, max(0, after)):
                yield [RunEvent.of(e) for e in batch]
        except SlowSubscriber as e:
            raise gql_error(str(e), "SLOW_SUBSCRIBER") from None
        finally:
            ctx.state.subscriptions.release(key)


def _hold_subscription(info: Info) -> str:
    """Count a subscription against its client's limit (``Limits.max_subscriptions_per_token``); returns the key
    to release."""
    ctx = info.context
    key = ctx.client_key
    try:
        ctx.state.subscriptions.acquire(key)
    except TooManySubscriptions as e:
        raise gql_error(str(e), "TOO_MANY_SUBSCRIPTIONS") from None
    return key


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
    overview_max_rows: int = 200_000
    max_subscriptions_per_token: int = 200  # live subscriptions one token (or anonymous address) holds per process


def _code_for(error: GraphQLError) -> str:
    """A code for an error graphql-core or strawberry raised without one."""
    msg = error.message
    if msg.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    if msg.startswith("Variable '$") or "got invalid value" in msg or "cannot represent" in msg.lower():
        return BAD_INPUT
    return "GRAPHQL_VALIDATION_FAILED"


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Give every error a code (clients branch on it); log only the unexpected ones, with a generic message
        to the client (an exception's text may carry paths or URLs)."""
        for error in errors:
            original = error.original_error
            code = (error.extensions or {}).get("code")
            if original is not None and not isinstance(original, GraphQLError):
                log.error("unexpected error in %s", error.path, exc_info=original)
                error.message = "internal server error (see the server log)"
                error.extensions = {**(error.extensions or {}), "code": "INTERNAL"}
            elif code is None:
                inner = (original.extensions or {}).get("code") if isinstance(original, GraphQLError) else None
                error.extensions = {**(error.extensions or {}), "code": inner or _code_for(error)}


class _DepthLimiter(QueryDepthLimiter):
    """strawberry's depth limiter, made safe on documents it trips over (an empty selection set raises
    ValueError, a spread of an unknown fragment KeyError): those become validation errors."""

    def __init__(self, max_depth: int):
        super().__init__(max_depth=max_depth)
        inner = self.validation_rules[0]

        class SafeDepthRule(ValidationRule):
            def __init__(self, context: ValidationContext) -> None:
                try:
                    inner(context)  # it checks the whole document here and reports to the context
                except KeyError:
                    pass  # an unknown fragment: graphql's own rules report it
                except ValueError:
                    context.report_error(GraphQLError("a selection set is empty: ask for at least one field"))
                except RecursionError:
                    context.report_error(GraphQLError("the document nests too deeply"))
                super().__init__(context)

        self.validation_rules = [SafeDepthRule]


def build_schema(limits: Limits = Limits()) -> strawberry.Schema:
    """The schema with its depth, alias and token limits (introspection is not depth-limited).

    Parsed and validated documents are cached (dashboards and clients repeat the same queries).
    """
    return _Schema(
        query=Query, mutation=Mutation, subscription=Subscription,
        extensions=[lambda: MaxTokensLimiter(limits.max_tokens), lambda: ParserCache(maxsize=256),
                    lambda: _DepthLimiter(limits.max_depth),
                    lambda: MaxAliasesLimiter(limits.max_aliases), lambda: ValidationCache(maxsize=256)])
