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

import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from gflow.artifacts.base import digest_of
from gflow.errors import SerializationError
from gflow.executors.base import Call, Outcome, qualname
from gflow.serialization import canonical_json, decode, encode

CALL = "gflow.call/v1"
ARRAY = "gflow.array/v1"
ARRAY_PAGED = "gflow.array/v2"
PAGE = "gflow.array-page/v1"
OUTCOME = "gflow.outcome/v1"
#: results up to this size (canonical JSON) also travel inside the outcome record: one read instead of two
RESULT_INLINE_MAX = 16 * 1024

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")

#: worker exit codes
EXIT_OK, EXIT_TASK_FAILED, EXIT_WORKER_ERROR = 0, 1, 2


def outcome_slot(spec_digest: str) -> str:
    """Where the outcome of the call spec ``spec_digest`` is written (a sha256-shaped key)."""
    return digest_of(f"{OUTCOME}\0{spec_digest}".encode())


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
    return digest_of(canonical_json(spec).encode())


def write_call_spec(artifacts: Any, call: Call, *, image: str | None = None, bundle: str | None = None) -> str:
    """Store the inputs and the spec of one call; returns the spec's digest.

    Raises:
        SerializationError: naming the task when an input has no canonical form.
    """
    spec, blobs = encode_call_spec(call, image=image, bundle=bundle)
    artifacts.put_many(blobs)  # the inputs among them; the spec after everything it refers to
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
        d = digest_of(data)
        out[d] = data
        pages.append(d)
    array = {"kind": ARRAY_PAGED, "size": len(specs), "chunk": chunk, "page_size": page_size, "pages": pages}
    data = canonical_json(array).encode()
    d = digest_of(data)
    out[d] = data
    return d, out


def elements(spec: dict) -> int:
    """How many elements (array children) an array spec has."""
    if spec.get("kind") == ARRAY_PAGED:
        return -(-int(spec["size"]) // int(spec["chunk"]))
    return len(spec["calls"])


def element_calls(artifacts: Any, spec: dict, index: int) -> list[tuple[str, dict, dict[str, bytes]]]:
    """The calls element ``index`` of a (checked) paged array spec runs: ``(spec digest, call spec,
    inline inputs)``, each call spec checked as :func:`read_spec` checks a stored one.

    Raises:
        SerializationError: a page that is not one, or an inline input that does not match its digest.
    """
    size, chunk, page_size = spec["size"], spec["chunk"], spec["page_size"]
    pages: dict[int, dict] = {}
    out = []
    for j in range(index * chunk, min(size, (index + 1) * chunk)):
        p = j // page_size
        if p not in pages:
            page = _json_object(artifacts.get(spec["pages"][p]), f"array page {spec['pages'][p]}")
            calls, inputs = page.get("calls"), page.get("inputs")
            if page.get("kind") != PAGE or type(calls) is not list or type(inputs) is not dict:
                raise SerializationError(f"{spec['pages'][p]} is not a gflow array page")
            pages[p] = page
        page = pages[p]
        pos = j % page_size
        if pos >= len(page["calls"]) or type(page["calls"][pos]) is not dict:
            raise SerializationError(f"array page {spec['pages'][p]} has no call spec {pos}")
        call = _check_call(page["calls"][pos], f"call {j} of a paged array")
        inline: dict[str, bytes] = {}
        text = page["inputs"].get(call["inputs"])
        if text is not None:
            data = text.encode() if type(text) is str else b""
            if digest_of(data) != call["inputs"]:
                raise SerializationError(f"inline inputs of call {j} do not match their digest {call['inputs']}")
            inline[call["inputs"]] = data
        out.append((spec_digest(call), call, inline))
    return out


def _check_call(spec: dict, what: str) -> dict:
    bad = [k for k, ok in (("task", type(spec.get("task")) is str), ("version", type(spec.get("version")) is str),
                           ("inputs", _is_key(spec.get("inputs"))), ("pickle", type(spec.get("pickle")) is bool),
                           ("bundle", spec.get("bundle") is None or _is_key(spec.get("bundle")))) if not ok]
    if spec.get("kind") != CALL or bad:
        raise SerializationError(f"{what}: malformed field(s) {', '.join(bad) or 'kind'}")
    return spec


def _is_count(v: Any, least: int) -> bool:
    return type(v) is int and v >= least


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
    if kind == ARRAY_PAGED:
        size, page_size, pages = spec.get("size"), spec.get("page_size"), spec.get("pages")
        ok = (_is_count(size, 0) and _is_count(spec.get("chunk"), 1) and _is_count(page_size, 1)
              and type(pages) is list and all(_is_key(p) for p in pages))
        if not ok or len(pages or ()) != -(-int(size or 0) // int(page_size or 1)):
            raise SerializationError(f"paged array spec {digest}: 'size', 'chunk', 'page_size' must be counts and "
                                     f"'pages' one sha256 digest per page")
        return spec
    if kind != CALL:
        raise SerializationError(f"{digest} is not a gflow call spec (kind {str(kind)[:80]!r})")
    return _check_call(spec, f"call spec {digest}")


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


def result_bytes(artifacts: Any, rec: dict) -> bytes:
    """The encoded result of a successful outcome record: its inline copy (``result_data``, used only
    when it hashes to the record's ``result`` digest) or the stored blob (verified on read)."""
    text = rec.get("result_data")
    if type(text) is str:
        data = text.encode()
        if digest_of(data) == rec["result"]:
            return data
    return bytes(artifacts.get(rec["result"]))


def to_outcome(artifacts: Any, rec: dict, *, allow_pickle: bool = False) -> Outcome:
    """The engine-side :class:`Outcome` of an outcome record (the result is read, verified and decoded).

    Args:
        allow_pickle: Decode a signed pickled result: pass the task's own ``options.pickle`` (never a
            value read from the store).
    """
    from gflow.usage import clean_usage

    started, ended = _time(rec.get("started")), _time(rec.get("ended"))
    usage = clean_usage(rec.get("usage"))  # measured by the worker (untrusted: known numbers only)
    info = {"usage": usage} if usage else None
    if rec.get("ok") is True:
        where = f"result of task '{_text(rec.get('task'), '?')[:200]}'"
        try:
            value = decode(result_bytes(artifacts, rec), artifacts.get, allow_pickle=allow_pickle, where=where)
        except Exception as e:  # noqa: BLE001 - reported as the call's failure
            return Outcome(False, error_type=qualname(type(e)), error_message=f"cannot read the result: {e}",
                           traceback="", started=started, ended=ended or time.time(), info=info)
        return Outcome(True, value, started=started, ended=ended, result_ref=rec["result"], info=info)
    return Outcome(False, error_type=_text(rec.get("error_type"), "Error") or "Error",
                   error_message=_text(rec.get("error_message")), traceback=_text(rec.get("traceback")),
                   started=started, ended=ended or time.time(), info=info)
