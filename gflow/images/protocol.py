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
import time
from collections.abc import Sequence
from typing import Any

from gflow.errors import SerializationError
from gflow.executors.base import Call, Outcome
from gflow.serialization import canonical_json, decode, encode

CALL = "gflow.call/v1"
ARRAY = "gflow.array/v1"
OUTCOME = "gflow.outcome/v1"

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


def read_spec(artifacts: Any, digest: str) -> dict:
    spec = json.loads(artifacts.get(digest))
    if not isinstance(spec, dict) or spec.get("kind") not in (CALL, ARRAY):
        raise SerializationError(f"{digest} is not a gflow call spec (kind {spec.get('kind')!r})")
    return spec


def write_outcome(artifacts: Any, spec_digest: str, record: dict) -> None:
    record = {"kind": OUTCOME, "spec": spec_digest, **record}
    artifacts.put(canonical_json(record).encode(), outcome_slot(spec_digest))


def read_outcome(artifacts: Any, spec_digest: str) -> dict | None:
    """The outcome record of a call spec, or None if the worker has not written one (yet)."""
    slot = outcome_slot(spec_digest)
    if not artifacts.exists(slot):
        return None
    rec = json.loads(artifacts.get(slot))
    return rec if isinstance(rec, dict) and rec.get("kind") == OUTCOME else None


def to_outcome(artifacts: Any, rec: dict) -> Outcome:
    """The engine-side :class:`Outcome` of an outcome record (the result is read and decoded)."""
    if rec.get("ok"):
        try:
            value = decode(artifacts.get(rec["result"]), artifacts.get)
        except Exception as e:  # noqa: BLE001 - reported as the call's failure
            return Outcome(False, error_type=type(e).__name__, error_message=f"cannot read the result: {e}",
                           traceback="", started=rec.get("started"), ended=rec.get("ended") or time.time())
        return Outcome(True, value, started=rec.get("started"), ended=rec.get("ended"), result_ref=rec["result"])
    return Outcome(False, error_type=rec.get("error_type") or "Error", error_message=rec.get("error_message") or "",
                   traceback=rec.get("traceback") or "", started=rec.get("started"),
                   ended=rec.get("ended") or time.time())
