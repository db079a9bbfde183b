"""The Volcano Job CRD's OpenAPI v3 schema (tests/resources/volcano) as a JSON Schema validator.

The CRD's structural schema becomes JSON Schema with two Kubernetes rules made explicit: an object with
``properties`` accepts no other field (the API server prunes unknown fields; a strict client is refused:
here an unknown field is an error, so a misspelt field fails the test), and ``x-kubernetes-int-or-string``
is the ``anyOf`` it already carries. Types, ``required``, ``enum``, ``minimum``, ``pattern``, ``minItems`` and
``maxLength`` are checked as written.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_PATH = Path(__file__).resolve().parents[1] / "resources" / "volcano" / "batch.volcano.sh_jobs.yaml"


def _to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("format", "default", "description")}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable"):
        out.pop("nullable", None)
        if "type" in out:
            out["type"] = [out["type"], "null"]
    return out


@functools.cache
def job_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = _to_json_schema(version["schema"]["openAPIV3Schema"])
    return schema


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(job_schema())


def job_errors(obj: dict) -> list[str]:
    """Every way ``obj`` breaks the Volcano Job schema, as ``path: message`` lines (empty: valid)."""
    errors = sorted(_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
