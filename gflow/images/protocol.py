"""The remote-call contract: call specs in, outcome records out, all through the artifact store.

A remote backend (Docker, AWS Batch, Volcano) never ships code: it writes a **call spec** (canonical
JSON, content-addressed) naming the task by import path and version and its inputs by digest, and
starts ``gflow worker SPEC_DIGEST`` in the image. The worker writes the output blob and an
**outcome record** to the spec's *outcome slot*, ``outcome_slot(spec_digest)``: a key derived from
the spec's digest, so the driver knows where to look without talking to the container. Each
attempt has its own spec (the attempt number is in it) and so its own slot. A fan-out can be one
**array spec** listing call specs; element ``i`` is run by ``gflow worker ARRAY_DIGEST --index i``
(or ``AWS_BATCH_JOB_ARRAY_INDEX`` / ``VC_TASK_INDEX``). A **paged array spec** (``gflow.array/v2``)
does the same for very large fan-outs without one stored spec per call: pages of up to
``page_size`` call specs (held inline, with small inputs inline too), and ``chunk`` calls per
element. Formats: ``docs/images.md``.
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
ARRAY_PAGED = "gflow.array/v2"
PAGE = "gflow.array-page/v1"
OUTCOME = "gflow.outcome/v1"

#: worker exit codes
EXIT_OK, EXIT_TASK_FAILED, EXIT_WORKER_ERROR = 0, 1, 2


def outcome_slot(spec_digest: str) -> str:
    """Where the outcome of the call spec ``spec_digest`` is written (a sha256-shaped key)."""
    return "sha256:" + hashlib.sha256(f"{OUTCOME}\0{spec_digest}".encode()).hexdigest()


def _put_json(artifacts: Any, obj: dict) -> str:
    return artifacts.put(canonical_json(obj).encode())


def encode_call_spec(call: Call, *, image: str | None = None,
                     bundle: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """The spec of one call and the blobs it refers to (its encoded inputs and their typed blobs), by
    digest, without storing anything. ``spec_digest(spec)`` is the digest :func:`write_call_spec` gives.

    Raises:
        SerializationError: naming the task when an input has no canonical form.
    """
    task = call.task
    enc = encode({"args": list(call.args), "kwargs": call.kwargs}, allow_pickle=task.options.pickle,
                 where=f"inputs of task '{task.name}'")
    blobs = dict(enc.blobs)
    blobs[enc.digest] = enc.data
    from gflow import __version__

    spec = {"kind": CALL, "task": task.identity, "version": task.version, "name": task.name, "inputs": enc.digest,
            "pickle": bool(task.options.pickle), "run_id": call.run_id, "call_id": call.id,
            "attempt": call.attempt, "key": call.key, "image": image, "bundle": bundle, "gflow": __version__}
    return spec, blobs


def spec_digest(spec: dict) -> str:
    """The digest of a spec document (what it is stored under, and what names its outcome slot)."""
    return "sha256:" + hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def write_call_spec(artifacts: Any, call: Call, *, image: str | None = None, bundle: str | None = None) -> str:
    """Store the inputs and the spec of one call; returns the spec's digest.

    Raises:
        SerializationError: naming the task when an input has no canonical form.
    """
    spec, blobs = encode_call_spec(call, image=image, bundle=bundle)
    inputs = blobs.pop(spec["inputs"])
    artifacts.put_many(blobs)
    artifacts.put(inputs, spec["inputs"])
    return _put_json(artifacts, spec)


def write_array_spec(artifacts: Any, spec_digests: Sequence[str]) -> str:
    """One spec for a fan-out: element ``i`` runs ``calls[i]``."""
    return _put_json(artifacts, {"kind": ARRAY, "calls": list(spec_digests)})


def paged_array_blobs(specs: Sequence[dict], inline: dict[str, bytes], *, chunk: int = 1,
                      page_size: int = 100) -> tuple[str, dict[str, bytes]]:
    """A paged array spec (``gflow.array/v2``) over ``specs`` (call specs, in order) and its page
    documents, not stored: ``(array digest, {digest: bytes})`` to store. Element ``i`` runs calls
    ``i*chunk .. (i+1)*chunk - 1``; ``inline`` (input digest -> canonical JSON) are carried in the
    page of the call that needs them (the worker verifies them against their digest)."""
    if chunk < 1 or page_size < 1:
        raise ValueError(f"chunk and page_size must be at least 1 (got {chunk}, {page_size})")
    out: dict[str, bytes] = {}
    pages = []
    for start in range(0, len(specs), page_size):
        part = specs[start:start + page_size]
        doc = {"kind": PAGE, "calls": list(part),
               "inputs": {s["inputs"]: inline[s["inputs"]].decode() for s in part if s["inputs"] in inline}}
        data = canonical_json(doc).encode()
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        out[d] = data
        pages.append(d)
    array = {"kind": ARRAY_PAGED, "size": len(specs), "chunk": chunk, "page_size": page_size, "pages": pages}
    data = canonical_json(array).encode()
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    out[d] = data
    return d, out


def elements(spec: dict) -> int:
    """How many elements (array children) an array spec has."""
    if spec.get("kind") == ARRAY_PAGED:
        return -(-int(spec["size"]) // int(spec["chunk"]))
    return len(spec["calls"])


def element_calls(artifacts: Any, spec: dict, index: int) -> list[tuple[str, dict, dict[str, bytes]]]:
    """The calls element ``index`` of a paged array spec runs: ``(spec digest, call spec, inline inputs)``.

    Raises:
        SerializationError: a page that is not one, or an inline input that does not match its digest.
    """
    size, chunk, page_size = int(spec["size"]), int(spec["chunk"]), int(spec["page_size"])
    first, last = index * chunk, min(size, (index + 1) * chunk)
    pages: dict[int, dict] = {}
    out = []
    for j in range(first, last):
        p = j // page_size
        if p not in pages:
            page = json.loads(artifacts.get(spec["pages"][p]))
            if not isinstance(page, dict) or page.get("kind") != PAGE:
                raise SerializationError(f"{spec['pages'][p]} is not a gflow array page")
            pages[p] = page
        page = pages[p]
        call = page["calls"][j % page_size]
        if not isinstance(call, dict) or call.get("kind") != CALL:
            raise SerializationError(f"element {index} of a paged array: entry {j} is not a call spec")
        inline: dict[str, bytes] = {}
        text = page.get("inputs", {}).get(call["inputs"])
        if text is not None:
            data = text.encode()
            if "sha256:" + hashlib.sha256(data).hexdigest() != call["inputs"]:
                raise SerializationError(f"inline inputs of call {j} do not match their digest {call['inputs']}")
            inline[call["inputs"]] = data
        out.append((spec_digest(call), call, inline))
    return out


def read_spec(artifacts: Any, digest: str) -> dict:
    spec = json.loads(artifacts.get(digest))
    if not isinstance(spec, dict) or spec.get("kind") not in (CALL, ARRAY, ARRAY_PAGED):
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


#: results up to this size (canonical JSON) also travel inside the outcome record: one read instead of two
RESULT_INLINE_MAX = 16 * 1024


def result_bytes(artifacts: Any, rec: dict) -> bytes:
    """The encoded result of a successful outcome record: its inline copy (``result_data``, checked
    against the ``result`` digest) or the stored blob."""
    text = rec.get("result_data")
    if isinstance(text, str):
        data = text.encode()
        if "sha256:" + hashlib.sha256(data).hexdigest() == rec["result"]:
            return data
    return bytes(artifacts.get(rec["result"]))


def to_outcome(artifacts: Any, rec: dict) -> Outcome:
    """The engine-side :class:`Outcome` of an outcome record (the result is read and decoded)."""
    if rec.get("ok"):
        try:
            value = decode(result_bytes(artifacts, rec), artifacts.get)
        except Exception as e:  # noqa: BLE001 - reported as the call's failure
            return Outcome(False, error_type=type(e).__name__, error_message=f"cannot read the result: {e}",
                           traceback="", started=rec.get("started"), ended=rec.get("ended") or time.time())
        return Outcome(True, value, started=rec.get("started"), ended=rec.get("ended"), result_ref=rec["result"])
    return Outcome(False, error_type=rec.get("error_type") or "Error", error_message=rec.get("error_message") or "",
                   traceback=rec.get("traceback") or "", started=rec.get("started"),
                   ended=rec.get("ended") or time.time())
