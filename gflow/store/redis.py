"""The Redis layer: live counters, a recent-event stream and pub/sub, over a durable store.

``RedisLayer(durable, "redis://host:6379/0")`` is a :class:`Store` whose every method goes to the
durable store (the source of truth). After a durable write succeeds it also updates Redis, with one
Lua script call per run (one round trip per write):

- ``gflow:run:{RUN}:states`` (hash): task run -> ``"pos:STATE"`` (``pos = attempt * 8 + rank``),
  kept by a Lua script that moves each entry forward only, whatever order writers arrive in;
- ``gflow:run:{RUN}:counts`` (hash): task runs per state, kept by the same script (HINCRBY -1 old,
  +1 new), trusted only while ``gflow:run:{RUN}:live`` exists and the counts add up to the number
  of task runs in the states hash;
- ``gflow:run:{RUN}:events`` (stream, capped with ``MAXLEN ~``): recent events;
- channel ``gflow:run:RUN``: one message per call, a JSON list of events.

Redis is a cache. :meth:`counts` rebuilds a run's counters from the durable store whenever they
are missing or inconsistent (after a restart, FLUSHALL, eviction, TTL). When Redis is unreachable,
writes still go to the durable store and nothing raises: the layer logs a warning, serves reads from
the durable store, retries Redis every ``retry_after`` seconds and, once back, drops the counters of
the runs it could not update so that they are rebuilt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import redis as redis_lib
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gflow.states import RANK, State
from gflow.store.base import Event, Row, RunRecord, Store, TaskRunRecord, Transition

log = logging.getLogger("gflow.store.redis")

# KEYS: states, counts, live, stream. ARGV: ttl, stream maxlen, channel, the events as one JSON list.
# One call per run per write: updates the counters, appends to the stream and publishes the JSON as is
# (one argument, not a dozen per event: packing commands was most of the layer's cost).
_APPLY = """
local RANK = __RANKS__
local function val(x) if x == cjson.null then return nil end return x end
local live = redis.call('EXISTS', KEYS[3]) == 1
for _, ev in ipairs(cjson.decode(ARGV[4])) do
  local tr, st = val(ev.task_run_id), ev.state
  local xadd = {'XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'run_id', ev.run_id, 'state', st,
                'attempt', ev.attempt, 'ts', ev.ts}
  if tr then
    table.insert(xadd, 'task_run_id')
    table.insert(xadd, tr)
    local pos = ev.attempt * 8 + RANK[st]
    local old = redis.call('HGET', KEYS[1], tr)
    local oldst = false
    local ok = true
    if old then
      local sep = string.find(old, ':', 1, true)
      local oldpos = tonumber(string.sub(old, 1, sep - 1))
      oldst = string.sub(old, sep + 1)
      ok = (oldpos % 8) < 4 and pos > oldpos
    end
    if ok then
      redis.call('HSET', KEYS[1], tr, pos .. ':' .. st)
      if live then
        if oldst then redis.call('HINCRBY', KEYS[2], oldst, -1) end
        redis.call('HINCRBY', KEYS[2], st, 1)
      end
    end
  end
  local msg = val(ev.message)
  if msg then
    table.insert(xadd, 'message')
    table.insert(xadd, msg)
  end
  redis.call(unpack(xadd))
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
""".replace("__RANKS__", "{" + ", ".join(f"{s.value} = {r}" for s, r in RANK.items()) + "}")

# KEYS: states, counts, live. ARGV: ttl, final ('1' = recount and mark live), then (task_run_id, "pos:state").
_REBUILD = """
for i = 3, #ARGV, 2 do
  local tr, v = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[1], tr)
  local put = true
  if old then
    local oldpos = tonumber(string.sub(old, 1, string.find(old, ':', 1, true) - 1))
    local pos = tonumber(string.sub(v, 1, string.find(v, ':', 1, true) - 1))
    put = (oldpos % 8) < 4 and pos > oldpos
  end
  if put then redis.call('HSET', KEYS[1], tr, v) end
end
if ARGV[2] ~= '1' then return {} end
redis.call('DEL', KEYS[2])
local c = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local st = string.sub(v, string.find(v, ':', 1, true) + 1)
  c[st] = (c[st] or 0) + 1
end
local out = {}
for st, n in pairs(c) do
  redis.call('HSET', KEYS[2], st, n)
  table.insert(out, st)
  table.insert(out, n)
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return out
"""

_REBUILD_CHUNK = 5000


def channel(run_id: str) -> str:
    """The pub/sub channel of a run's live events."""
    return f"gflow:run:{run_id}"


def _keys(run_id: str) -> tuple[str, str, str, str]:
    base = f"gflow:run:{{{run_id}}}"  # one hash slot per run (Redis Cluster)
    return f"{base}:states", f"{base}:counts", f"{base}:live", f"{base}:events"


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _event_from_store(e: Event) -> dict[str, Any]:
    return {"run_id": e.run_id, "task_run_id": e.task_run_id, "state": e.state.value, "attempt": e.attempt,
            "ts": e.ts, "message": e.message, "seq": e.seq}


def _identity(ev: dict[str, Any]) -> tuple:
    return ev["task_run_id"], ev["attempt"], ev["state"]


class RedisLayer(Store):
    """Live state in Redis over a durable store. See the module docstring.

    Args:
        durable: The source of truth (SQLite or Mongo store).
        url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
        stream_maxlen: About how many recent events each run's stream keeps.
        ttl: Seconds the live keys of a run live after its last transition.
        retry_after: Seconds between reconnection attempts while Redis is unreachable.
    """

    def __init__(self, durable: Store, url: str, *, stream_maxlen: int = 10_000, ttl: int = 7 * 86400,
                 retry_after: float = 5.0, socket_timeout: float = 2.0):
        self.durable = durable
        self.url = durable.url
        self.events_url = url
        self._safe_url = _redact(url)
        self.stream_maxlen = stream_maxlen
        self.ttl = ttl
        self.retry_after = retry_after
        self.redis = redis_lib.Redis.from_url(
            url, decode_responses=True, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1))  # one quick retry: a stale pooled connection
        self._apply_sha: str | None = None
        self._rebuild_script = self.redis.register_script(_REBUILD)
        self._lock = threading.Lock()
        self._degraded_since: float | None = None
        self._retry_at = 0.0
        self._dirty: set[str] = set()  # runs whose Redis counters missed updates while it was unreachable

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable (reads come from the durable store, writes skip Redis)."""
        return self._degraded_since is not None

    # -- Redis availability ----------------------------------------------------------------------
    def _usable(self) -> bool:
        """Whether to talk to Redis now; on the first try after an outage, invalidates what it missed."""
        with self._lock:
            if self._degraded_since is None:
                return True
            if time.monotonic() < self._retry_at:
                return False
            dirty = set(self._dirty)
            self._retry_at = time.monotonic() + self.retry_after
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.ping()
            for run_id in dirty:
                pipe.delete(_keys(run_id)[2])
            pipe.execute()
        except redis_lib.RedisError as e:
            log.debug("Redis at %s still unreachable: %s", self._safe_url, e)
            return False
        with self._lock:
            down = time.monotonic() - (self._degraded_since or time.monotonic())
            self._dirty -= dirty
            if self._dirty:  # marked meanwhile by another thread: invalidate those on the next call
                self._retry_at = 0.0
            else:
                self._degraded_since = None
        log.warning("Redis at %s reachable again after %.1fs; live counters of %d run(s) will be rebuilt",
                    self._safe_url, down, len(dirty))
        return True

    def _degrade(self, e: BaseException, what: str, runs: Sequence[str] = ()) -> None:
        with self._lock:
            first = self._degraded_since is None
            if first:
                self._degraded_since = time.monotonic()
            self._retry_at = time.monotonic() + self.retry_after
            self._dirty.update(runs)
        if first:
            log.warning("Redis at %s failed during %s (%s: %s); the durable store %s keeps every transition, "
                        "live counters and events are served from it; retrying Redis every %gs",
                        self._safe_url, what, type(e).__name__, e, self.durable.url, self.retry_after)

    # -- writes ------------------------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> None:
        self.durable.create_run(run)
        if not self._usable():
            self._degrade_quietly([run.id])
            return
        states, counts, live, _ = _keys(run.id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(states, counts)
            pipe.set(live, "1", ex=self.ttl)  # no task runs yet: the (empty) counters are right
            pipe.execute()
        except redis_lib.RedisError as e:
            self._degrade(e, "create run", [run.id])

    def _degrade_quietly(self, runs: Sequence[str]) -> None:
        with self._lock:
            self._dirty.update(runs)

    def set_run_state(self, run_id, state, ts, *, error=None, traceback=None, result_ref=None, result_inline=None):
        self.durable.set_run_state(run_id, state, ts, error=error, traceback=traceback, result_ref=result_ref,
                                   result_inline=result_inline)
        self._publish({run_id: [{"run_id": run_id, "task_run_id": None, "state": State(state).value, "attempt": 0,
                                 "ts": ts, "message": error}]}, "set run state")

    def apply(self, transitions: Sequence[Transition]) -> list[Transition]:
        refused = self.durable.apply(transitions)  # raises StoreError if it failed: the recorder retries
        ids = {id(t) for t in refused}
        by_run: dict[str, list[dict[str, Any]]] = {}
        for t in transitions:
            if id(t) not in ids:
                evs = by_run.get(t.run_id)
                if evs is None:
                    evs = by_run[t.run_id] = []
                evs.append({"run_id": t.run_id, "task_run_id": t.task_run_id, "state": t.state.value,
                            "attempt": t.attempt, "ts": t.ts, "message": t.message or t.error})
        if by_run:
            self._publish(by_run, "record transitions")
        return refused

    def _publish(self, by_run: dict[str, list[dict[str, Any]]], what: str) -> None:
        """Counters, stream and pub/sub for each run: one script call per run, one round trip in all."""
        if not self._usable():
            self._degrade_quietly(list(by_run))
            return
        calls = [(_keys(run_id), [self.ttl, self.stream_maxlen, channel(run_id), json.dumps(evs)])
                 for run_id, evs in by_run.items()]
        try:
            try:
                self._run_scripts(calls)
            except redis_lib.exceptions.NoScriptError:  # a restarted server (or SCRIPT FLUSH): nothing ran
                self._apply_sha = self.redis.script_load(_APPLY)
                self._run_scripts(calls)
        except redis_lib.RedisError as e:
            self._degrade(e, what, list(by_run))

    def _run_scripts(self, calls: Sequence[tuple[tuple[str, ...], Sequence[Any]]]) -> None:
        if self._apply_sha is None:
            self._apply_sha = self.redis.script_load(_APPLY)
        if len(calls) == 1:
            keys, args = calls[0]
            self.redis.evalsha(self._apply_sha, len(keys), *keys, *args)
            return
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._apply_sha, len(keys), *keys, *args)
        pipe.execute()

    # -- live reads --------------------------------------------------------------------------------
    def counts(self, run_id: str) -> dict[str, int]:
        """Task runs by state: from Redis when its counters are live and add up, else rebuilt from the durable store."""
        if self._usable():
            states, counts, live, _ = _keys(run_id)
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(live)
                pipe.hgetall(counts)
                pipe.hlen(states)
                is_live, raw, n = pipe.execute()
                got = {k: int(v) for k, v in raw.items()}
                if is_live and sum(got.values()) == n:
                    return {k: v for k, v in got.items() if v > 0}
                return self._rebuild(run_id)
            except redis_lib.RedisError as e:
                self._degrade(e, "counts")
        return self.durable.counts(run_id)

    def counts_many(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """:meth:`counts` of many runs with one Redis round trip (runs whose counters are not live are rebuilt)."""
        ids = list(dict.fromkeys(run_ids))
        if self._usable():
            try:
                pipe = self.redis.pipeline(transaction=False)
                for run_id in ids:
                    states, counts, live, _ = _keys(run_id)
                    pipe.exists(live)
                    pipe.hgetall(counts)
                    pipe.hlen(states)
                res = pipe.execute()
                out = {}
                for i, run_id in enumerate(ids):
                    is_live, raw, n = res[3 * i:3 * i + 3]
                    got = {k: int(v) for k, v in raw.items()}
                    out[run_id] = ({k: v for k, v in got.items() if v > 0} if is_live and sum(got.values()) == n
                                   else self._rebuild(run_id))
                return out
            except redis_lib.RedisError as e:
                self._degrade(e, "counts")
        many = getattr(self.durable, "counts_many", None)
        return many(ids) if many is not None else {r: self.durable.counts(r) for r in ids}

    def counts_by_task(self, run_id: str) -> dict[str, dict[str, int]]:
        return self.durable.counts_by_task(run_id)  # the durable store's summary (SQLite: kept by triggers)

    def _rebuild(self, run_id: str) -> dict[str, int]:
        """Merge the durable store's task-run states into Redis (forward only) and recount."""
        pairs: list[Any] = []
        for tr in self.durable.task_runs(run_id):
            pairs += [tr.id, f"{tr.attempt * 8 + RANK[tr.state]}:{tr.state.value}"]
        if not pairs:
            return {}  # nothing to keep live (and no keys for ids that name no run)
        keys = _keys(run_id)[:3]
        step = 2 * _REBUILD_CHUNK
        for i in range(0, len(pairs), step):
            self._rebuild_script(keys=keys, args=[self.ttl, "0", *pairs[i:i + step]])
        out = self._rebuild_script(keys=keys, args=[self.ttl, "1"])
        log.info("rebuilt the live counters of run %s from %s", run_id, self.durable.url)
        return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}

    def recent_events(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        """The latest ``count`` events of a run, oldest first, from its Redis stream.

        Each is a dict (run_id, task_run_id, state, attempt, ts, message) with ``stream_id``. When Redis
        is unreachable or holds no stream for the run, they come from the durable store (with ``seq``).
        After a Redis restart the stream only holds events recorded since.
        """
        if self._usable():
            try:
                rows = self.redis.xrevrange(_keys(run_id)[3], count=count)
            except redis_lib.RedisError as e:
                self._degrade(e, "recent events")
            else:
                if rows:
                    return [_decode_stream(sid, f) for sid, f in reversed(rows)]  # type: ignore[arg-type,unused-ignore]  # decode_responses: str
        return [_event_from_store(e) for e in self.durable.events(run_id)[-count:]] if count > 0 else []

    def subscribe(self, run_id: str, *, timeout: float | None = None, until_done: bool = True,
                  stop: threading.Event | None = None, ready: threading.Event | None = None,
                  poll_interval: float = 0.5) -> Iterator[dict[str, Any]]:
        """Live events of a run as they are recorded (dicts as in :meth:`recent_events`).

        Starts with events recorded after the call (``ready`` is set once it listens). Ends after the run's own
        terminal event
        (``task_run_id`` None) when ``until_done``, after ``timeout`` seconds, or when ``stop`` is set.
        If Redis is or becomes unreachable it goes on by polling the durable store, without repeating
        an event it already gave.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        since = time.time() - 1.0  # what the durable log must give if Redis fails (small clock skew allowed)
        seen: set[tuple] = set()
        pubsub = None
        after = 0
        try:
            if self._usable():
                try:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel(run_id))
                except redis_lib.RedisError as e:
                    self._degrade(e, "subscribe")
                    pubsub = None
            if ready is not None:
                ready.set()
            while True:
                if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
                    return
                wait = poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic()))
                if pubsub is not None:
                    try:
                        msg = pubsub.get_message(timeout=wait)
                    except redis_lib.RedisError as e:
                        self._degrade(e, "subscription")
                        pubsub.close()
                        pubsub = None
                        continue
                    batch = json.loads(msg["data"]) if msg and msg.get("type") == "message" else []
                else:  # poll the durable log; skip what came before the call or was given already
                    evs = self.durable.events(run_id, after=after)
                    if evs:
                        after = evs[-1].seq
                    batch = [_event_from_store(e) for e in evs if e.ts >= since]
                    if not evs:
                        time.sleep(wait)
                for ev in batch:
                    ident = _identity(ev)
                    if ident in seen:
                        continue
                    seen.add(ident)
                    yield ev
                    if until_done and ev["task_run_id"] is None and State(ev["state"]).terminal:
                        return
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except redis_lib.RedisError:
                    pass

    async def asubscribe(self, run_id: str, *, timeout: float | None = None,
                         until_done: bool = True) -> AsyncIterator[dict[str, Any]]:
        """:meth:`subscribe` for asyncio (e.g. a GraphQL subscription); stops its thread when closed."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def pump() -> None:
            try:
                for ev in self.subscribe(run_id, timeout=timeout, until_done=until_done, stop=stop):
                    loop.call_soon_threadsafe(q.put_nowait, ev)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(q.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(q.put_nowait, done)

        th = threading.Thread(target=pump, name=f"gflow-subscribe-{run_id}", daemon=True)
        th.start()
        try:
            while True:
                item = await q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    # -- the rest goes to the durable store ------------------------------------------------------------
    def update_run(self, run_id: str, **fields: Any) -> None:
        self.durable.update_run(run_id, **fields)

    def get_run(self, run_id: str) -> RunRecord:
        return self.durable.get_run(run_id)

    def list_runs(self, **kw: Any) -> list[RunRecord]:
        return self.durable.list_runs(**kw)

    def get_task_run(self, task_run_id: str) -> TaskRunRecord:
        return self.durable.get_task_run(task_run_id)

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord | None]:
        return self.durable.get_runs(run_ids)

    def get_task_runs(self, task_run_ids: Sequence[str]) -> dict[str, TaskRunRecord | None]:
        return self.durable.get_task_runs(task_run_ids)

    def task_runs(self, run_id: str, **kw: Any) -> list[TaskRunRecord]:
        return self.durable.task_runs(run_id, **kw)

    def events(self, run_id: str, **kw: Any) -> list[Event]:
        return self.durable.events(run_id, **kw)

    def find_cached(self, key: str) -> TaskRunRecord | None:
        return self.durable.find_cached(key)

    def results_by_key(self, run_id: str) -> dict[str, TaskRunRecord]:
        return self.durable.results_by_key(run_id)

    def lineage(self, content_id: str) -> dict[str, Any]:
        return self.durable.lineage(content_id)

    def objects_of(self, task_run_id: str) -> dict[str, list[str]]:
        return self.durable.objects_of(task_run_id)

    def apply_rows(self, rows: Sequence[Row]) -> list[int]:
        return Store.apply_rows(self, rows)  # through this layer's apply (not the durable store's rows): Redis follows

    def offload_writer(self) -> Any:
        return None  # writes must pass through this layer to keep Redis current

    def claim_resume(self, run_id: str, claimant: str, expected: str | None) -> str | None:
        return self.durable.claim_resume(run_id, claimant, expected)

    def results_for_resume(self, run_id: str) -> dict[str, TaskRunRecord]:
        return self.durable.results_for_resume(run_id)

    def put_rows(self, table: str, rows: Sequence[dict[str, Any]], key: Sequence[str],
                 run_id: str | None = None) -> int:
        return self.durable.put_rows(table, rows, key, run_id)

    def get_rows(self, table: str, where: dict[str, Any] | None = None, *, limit: int = 100,
                 after: str | None = None) -> list[dict[str, Any]]:
        return self.durable.get_rows(table, where, limit=limit, after=after)

    def task_run_summaries(self, run_id: str, *, after: str | None = None,
                           limit: int | None = None) -> list[TaskRunRecord]:
        return self.durable.task_run_summaries(run_id, after=after, limit=limit)

    def derived_runs(self, run_id: str) -> list[RunRecord]:
        return self.durable.derived_runs(run_id)

    def task_events_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[Event]]:
        return self.durable.task_events_many(keys)

    def objects_many(self, task_run_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        return self.durable.objects_many(task_run_ids)

    def last_event_seq(self, run_id: str) -> int:
        return self.durable.last_event_seq(run_id)

    def downstream_many(self, run_id: str, task_run_ids: Sequence[str],
                        scan_limit: int = 200_000) -> dict[str, list[str]]:
        return self.durable.downstream_many(run_id, task_run_ids, scan_limit)

    def close(self) -> None:
        try:
            self.redis.close()
        finally:
            self.durable.close()


def _decode_stream(sid: str, f: dict[str, str]) -> dict[str, Any]:
    return {"run_id": f["run_id"], "task_run_id": f.get("task_run_id"), "state": f["state"],
            "attempt": int(f["attempt"]), "ts": float(f["ts"]), "message": f.get("message"), "stream_id": sid}
