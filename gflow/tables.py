"""Named tables of results people look up by key (a precalc run's predictions by model and input key).

Inside a flow body, ``gflow.tables.record("predictions", rows, key=("model", "key"))`` upserts rows into the
run's state store, noting the run that wrote them; the GraphQL server answers ``tableRows`` and
``predictions`` queries over them. Rows are JSON objects (pydantic models are dumped); the last write of a
key wins, so a rerun replaces what an earlier run wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from gflow._context import current_flow
from gflow.errors import GflowError

__all__ = ["record", "rows"]


def _jsonable(row: Any) -> dict[str, Any]:
    if isinstance(row, BaseModel):
        data = row.model_dump(mode="json")
    else:
        data = dict(row)
    if not all(isinstance(k, str) for k in data):
        raise GflowError("a table row's field names must be strings")
    return data


def record(table: str, rows: Iterable[Any], *, key: Sequence[str]) -> int:
    """Upsert ``rows`` into ``table`` of the running flow's state store (call it in a flow body).

    Raises:
        GflowError: outside a flow, or for a row without its key fields.
    """
    ctx = current_flow.get()
    if ctx is None:
        raise GflowError("gflow.tables.record() is called in a flow body (it writes to the run's store)")
    data = [_jsonable(r) for r in rows]
    return int(ctx.engine.store.put_rows(table, data, tuple(key), ctx.id))


def rows(table: str, where: dict[str, Any] | None = None, *, store: Any = None, limit: int = 100,
         after: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``table`` whose fields equal ``where``'s (from the profile's store unless one is given)."""
    from gflow.config import load_profile
    from gflow.store import open_store

    given = load_profile(store=store).store
    st = open_store(given)  # only the state store: reading rows needs no artifact store nor executor
    try:
        return st.get_rows(table, where, limit=limit, after=after)
    finally:
        if st is not given:
            st.close()
