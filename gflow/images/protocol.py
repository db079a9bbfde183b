"""The remote-call contract: call specs in, outcome records out, all through the artifact store.

A remote backend (Docker, AWS Batch, Volcano) never ships code: it writes a **call spec** (canonical
JSON, content-addressed) naming the task by import path and version and its inputs by digest, and
starts ``gflow worker SPEC_DIGEST`` in the image. The worker writes the output blob and an
**outcome record** to the spec's *outcome slot*, ``outcome_slot(spec_digest)``: a key derived from
the spec's digest, so the driver knows where to look without talking to the container. Each
attempt has its own spec (the attempt number is in it) and so its own slot. A fan-out can be one
**array spec** listing call specs; element ``i`` is run by ``gflow worker ARRAY_DIGEST --index i``
(or ``AWS_BATCH_JOB_ARRAY_INDEX`` / ``VC_TASK_INDEX``). Formats: ``docs/images.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from gflow.errors import SerializationError
from gflow.executors.base import Call, Outcome, _qualname
from gflow.serialization import canonical_json, decode, encode

CALL = "gflow.call/v1"
ARRAY = "gflow.array/v1"
OUTCOME = "gflow.outcome/v1"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")

#: worker exit codes
EXIT_OK, EXIT_TASK_FAILED, EXIT_WORKER_ERROR = 0, 1, 2


def outcome_slot(spec_digest: str) -> str:
    """Where the outcome of the call spec ``spec_digest`` is written (a sha256-shaped key)."""
    return "sha256:" + hashlib.sha256(f"{OUTCOME}\0{spec_digest}".encode()).hexdigest()


def _put_json(artifacts: Any, obj: dict) -> str:
    return artifacts.put(canonical_json(obj).encode())


def write_call_spec(artifacts: Any, call: Call, *, image: str | None = None, bundle: str | None = None) -> str:
    """Store the inputs and the spec of one call; returns the spec's digest.

    Raises:
        SerializationError: naming the task when an input has no canonical form.
    """
    task = call.task
    enc = encode({"args": list(call.args), "kwargs": call.kwargs}, allow_pickle=task.options.pickle,
                 where=f"inputs of task '{task.name}'")
    artifacts.put_many(enc.blobs)
    inputs = artifacts.put(enc.data, enc.digest)
    from gflow import __version__

    spec = {"kind": CALL, "task": task.identity, "version": task.version, "name": task.name, "inputs": inputs,
            "pickle": bool(task.options.pickle), "run_id": call.run_id, "call_id": call.id,
            "attempt": call.attempt, "key": call.key, "image": image, "bundle": bundle, "gflow": __version__}
    return _put_json(artifacts, spec)


def write_array_spec(artifacts: Any, spec_digests: Sequence[str]) -> str:
    """One spec for a fan-out: element ``i`` runs ``calls[i]``."""
    return _put_json(artifacts, {"kind": ARRAY, "calls": list(spec_digests)})


def _json_object(data: bytes, what: str) -> dict:
    """A JSON object read from the store (untrusted): parse errors and other shapes are SerializationError."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise SerializationError(f"{what} is not JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise SerializationError(f"{what} is a JSON {type(obj).__name__}, not an object")
    return obj


def _is_key(v: Any) -> bool:
    return type(v) is str and _DIGEST.match(v) is not None


def read_spec(artifacts: Any, digest: str) -> dict:
    """A call or array spec, verified against its digest and checked field by field.

    Raises:
        SerializationError: the blob is not a well-formed gflow call or array spec.
        ArtifactNotFound: it is missing or corrupt.
    """
    spec = _json_object(artifacts.get(digest), f"call spec {digest}")
    kind = spec.get("kind")
    if kind == ARRAY:
        calls = spec.get("calls")
        if type(calls) is not list or not all(_is_key(c) for c in calls):
            raise SerializationError(f"array spec {digest}: 'calls' must be a list of sha256 digests")
        return spec
    if kind != CALL:
        raise SerializationError(f"{digest} is not a gflow call spec (kind {str(kind)[:80]!r})")
    bad = [k for k, ok in (("task", type(spec.get("task")) is str), ("version", type(spec.get("version")) is str),
                           ("inputs", _is_key(spec.get("inputs"))), ("pickle", type(spec.get("pickle")) is bool),
                           ("bundle", spec.get("bundle") is None or _is_key(spec.get("bundle")))) if not ok]
    if bad:
        raise SerializationError(f"call spec {digest}: malformed field(s) {', '.join(bad)}")
    return spec


def write_outcome(artifacts: Any, spec_digest: str, record: dict) -> None:
    record = {"kind": OUTCOME, "spec": spec_digest, **record}
    artifacts.put_slot(outcome_slot(spec_digest), canonical_json(record).encode())


def read_outcome(artifacts: Any, spec_digest: str) -> dict | None:
    """The outcome record of a call spec, or None if the worker has not written one (yet).

    The record is untrusted: one that is not a well-formed outcome record is reported as a failed
    outcome (``ok: false``) that says so, never an exception and never a success.
    """
    data = artifacts.get_slot(outcome_slot(spec_digest))
    if data is None:
        return None
    try:
        rec = _json_object(data, f"outcome record of {spec_digest}")
        if rec.get("kind") != OUTCOME:
            raise SerializationError(f"outcome record of {spec_digest} has kind {str(rec.get('kind'))[:80]!r}")
        if type(rec.get("ok")) is not bool or (rec["ok"] and not _is_key(rec.get("result"))):
            raise SerializationError(f"outcome record of {spec_digest}: 'ok' must be a boolean and a success "
                                     f"must name its 'result' digest")
    except SerializationError as e:
        return {"kind": OUTCOME, "spec": spec_digest, "ok": False, "stage": "outcome",
                "error_type": "gflow.errors.SerializationError", "error_message": str(e), "traceback": ""}
    return rec


def _text(v: Any, default: str = "") -> str:
    return v if type(v) is str else default


def _time(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) and math.isfinite(v) else None


def to_outcome(artifacts: Any, rec: dict, *, allow_pickle: bool = False) -> Outcome:
    """The engine-side :class:`Outcome` of an outcome record (the result is read, verified and decoded).

    Args:
        allow_pickle: Decode a signed pickled result: pass the task's own ``options.pickle`` (never a
            value read from the store).
    """
    started, ended = _time(rec.get("started")), _time(rec.get("ended"))
    if rec.get("ok") is True:
        where = f"result of task '{_text(rec.get('task'), '?')[:200]}'"
        try:
            value = decode(artifacts.get(rec["result"]), artifacts.get, allow_pickle=allow_pickle, where=where)
        except Exception as e:  # noqa: BLE001 - reported as the call's failure
            return Outcome(False, error_type=_qualname(type(e)), error_message=f"cannot read the result: {e}",
                           traceback="", started=started, ended=ended or time.time())
        return Outcome(True, value, started=started, ended=ended, result_ref=rec["result"])
    return Outcome(False, error_type=_text(rec.get("error_type"), "Error") or "Error",
                   error_message=_text(rec.get("error_message")), traceback=_text(rec.get("traceback")),
                   started=started, ended=ended or time.time())
