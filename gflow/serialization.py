"""Canonical serialization of task inputs and outputs.

Values become canonical JSON (sorted keys, no whitespace, tagged containers) so that equal
inputs give equal bytes and so equal cache keys on any machine. Arrays and tensors become typed
blobs (raw bytes + dtype + shape) referenced from the JSON by their sha256; the blobs travel
through the artifact store. Anything else is refused unless the task opted into pickle.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import hashlib
import importlib
import json
import math
import pathlib
import pickle
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from gflow.errors import SerializationError

TAG = "__gflow__"
_PRIMITIVES = (str, int, bool, type(None))
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class Encoded:
    """A value in canonical form.

    Attributes:
        data: Canonical JSON bytes.
        blobs: Typed blobs referenced from ``data``, by digest.
        digest: ``sha256:<hex>`` of ``data`` (blobs are covered through their digests).
    """

    __slots__ = ("data", "blobs", "_digest")

    def __init__(self, data: bytes, blobs: dict[str, bytes]):
        self.data = data
        self.blobs = blobs
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = "sha256:" + hashlib.sha256(self.data).hexdigest()
        return self._digest


def type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def import_path(path: str) -> Any:
    """Import ``module:qualname`` (or ``module.attr``) and return the object."""
    if ":" in path:
        mod_name, _, qual = path.partition(":")
    else:
        mod_name, _, qual = path.rpartition(".")
    obj: Any = importlib.import_module(mod_name)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _blob(blobs: dict[str, bytes], raw: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    blobs[digest] = raw
    return digest


def to_jsonable(value: Any, blobs: dict[str, bytes], allow_pickle: bool = False, where: str = "value") -> Any:
    """Convert ``value`` to a JSON-compatible tree; binary payloads are added to ``blobs``.

    Raises:
        SerializationError: naming ``where`` (e.g. ``argument 'x'``) and the offending type.
    """
    t = type(value)
    if t in _PRIMITIVES:
        return value
    if t is float:
        if math.isfinite(value):
            return value
        return {TAG: "float", "v": repr(value)}
    if t is list:
        return [to_jsonable(v, blobs, allow_pickle, where) for v in value]
    if t is dict and all(type(k) is str for k in value) and TAG not in value:
        return {k: to_jsonable(v, blobs, allow_pickle, where) for k, v in value.items()}
    if isinstance(value, BaseModel):
        try:
            data = value.model_dump(mode="json")
        except Exception as e:  # a model holding arbitrary types
            if allow_pickle:
                return _pickled(value, blobs)
            raise SerializationError(f"{where}: pydantic model {type_path(t)} is not JSON-serializable: {e}") from e
        return {TAG: "model", "type": type_path(t), "data": data}
    if t is tuple:
        return {TAG: "tuple", "items": [to_jsonable(v, blobs, allow_pickle, where) for v in value]}
    if isinstance(value, Mapping):
        items = [[to_jsonable(k, blobs, allow_pickle, where), to_jsonable(v, blobs, allow_pickle, where)]
                 for k, v in value.items()]
        items.sort(key=lambda kv: _dumps(kv[0]))
        return {TAG: "dict", "items": items}
    if isinstance(value, (set, frozenset)):
        items = sorted((to_jsonable(v, blobs, allow_pickle, where) for v in value), key=_dumps)
        return {TAG: "frozenset" if isinstance(value, frozenset) else "set", "items": items}
    if isinstance(value, bool | int | str) and isinstance(value, enum.Enum):
        return {TAG: "enum", "type": type_path(t), "v": value.value}
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "type": type_path(t), "v": to_jsonable(value.value, blobs, allow_pickle, where)}
    if isinstance(value, (bytes, bytearray)):
        return {TAG: "bytes", "b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, pathlib.PurePath):
        return {TAG: "path", "v": str(value)}
    if isinstance(value, _dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, _dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: to_jsonable(getattr(value, f.name), blobs, allow_pickle, where)
                for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "type": type_path(t), "data": data}
    mod = t.__module__
    if mod == "numpy" and t.__name__ == "ndarray":
        if value.dtype.hasobject:
            if allow_pickle:
                return _pickled(value, blobs)
            raise SerializationError(f"{where}: numpy arrays of dtype object cannot be serialized")
        import numpy as np

        arr = np.ascontiguousarray(value)
        return {TAG: "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape), "blob": _blob(blobs, arr.tobytes())}
    if mod.startswith("numpy") and hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        return to_jsonable(value.item(), blobs, allow_pickle, where)
    if mod == "torch" and t.__name__ in ("Tensor", "Parameter"):
        tensor = value.detach().to("cpu").contiguous()
        raw = tensor.view(-1).view(_torch_uint8()).numpy().tobytes() if tensor.numel() else b""
        return {TAG: "tensor", "dtype": str(tensor.dtype), "shape": list(tensor.shape), "blob": _blob(blobs, raw)}
    if allow_pickle:
        return _pickled(value, blobs)
    raise SerializationError(
        f"{where}: cannot serialize a value of type {type_path(t)}; use primitives, containers, pydantic "
        f"models (gflow.objects), dataclasses, numpy arrays or torch tensors, or set pickle=True on the task"
    )


def _torch_uint8():
    import torch

    return torch.uint8


def _pickled(value: Any, blobs: dict[str, bytes]) -> dict:
    try:
        raw = pickle.dumps(value, protocol=5)
    except Exception as e:
        raise SerializationError(f"cannot pickle a {type_path(type(value))}: {e}") from e
    return {TAG: "pickle", "blob": _blob(blobs, raw)}


def encode(value: Any, *, allow_pickle: bool = False, where: str = "value") -> Encoded:
    """Encode ``value`` canonically; see the module docstring."""
    t = type(value)
    if t is int and -(2**53) < value < 2**53:  # the common trivial result, without the JSON encoder
        return Encoded(str(value).encode(), {})
    if value is None:
        return Encoded(b"null", {})
    blobs: dict[str, bytes] = {}
    tree = to_jsonable(value, blobs, allow_pickle, where)
    try:
        data = _dumps(tree).encode()
    except (TypeError, ValueError) as e:
        raise SerializationError(f"{where}: {e}") from e
    return Encoded(data, blobs)


def from_jsonable(tree: Any, load_blob: Callable[[str], bytes]) -> Any:
    """Inverse of :func:`to_jsonable`; ``load_blob`` fetches a blob by digest."""
    t = type(tree)
    if t is list:
        return [from_jsonable(v, load_blob) for v in tree]
    if t is not dict:
        return tree
    tag = tree.get(TAG)
    if tag is None:
        return {k: from_jsonable(v, load_blob) for k, v in tree.items()}
    if tag == "model":
        cls = import_path(tree["type"])
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise SerializationError(f"{tree['type']} is not a pydantic model")
        return cls.model_validate(tree["data"])
    if tag == "tuple":
        return tuple(from_jsonable(v, load_blob) for v in tree["items"])
    if tag == "dict":
        return {_hashable(from_jsonable(k, load_blob)): from_jsonable(v, load_blob) for k, v in tree["items"]}
    if tag in ("set", "frozenset"):
        items = (_hashable(from_jsonable(v, load_blob)) for v in tree["items"])
        return set(items) if tag == "set" else frozenset(items)
    if tag == "float":
        return float(tree["v"])
    if tag == "enum":
        return import_path(tree["type"])(from_jsonable(tree["v"], load_blob))
    if tag == "bytes":
        return base64.b64decode(tree["b64"])
    if tag == "path":
        return pathlib.Path(tree["v"])
    if tag == "datetime":
        return _dt.datetime.fromisoformat(tree["v"])
    if tag == "date":
        return _dt.date.fromisoformat(tree["v"])
    if tag == "dataclass":
        cls = import_path(tree["type"])
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise SerializationError(f"{tree['type']} is not a dataclass")
        return cls(**{k: from_jsonable(v, load_blob) for k, v in tree["data"].items()})
    if tag == "ndarray":
        import numpy as np

        arr = np.frombuffer(load_blob(tree["blob"]), dtype=np.dtype(tree["dtype"]))
        return arr.reshape(tree["shape"]).copy()
    if tag == "tensor":
        import torch

        dtype = getattr(torch, tree["dtype"].removeprefix("torch."))
        raw = bytearray(load_blob(tree["blob"]))
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(tree["shape"]).clone()
    if tag == "pickle":
        return pickle.loads(load_blob(tree["blob"]))
    raise SerializationError(f"unknown gflow tag {tag!r}")


def _hashable(v: Any) -> Any:
    return tuple(v) if type(v) is list else v


def decode(data: bytes | str, load_blob: Callable[[str], bytes] | None = None) -> Any:
    """Decode canonical JSON produced by :func:`encode`."""

    def _no_blobs(digest: str) -> bytes:
        raise SerializationError(f"value references blob {digest} but no artifact store was given")

    return from_jsonable(json.loads(data), load_blob or _no_blobs)


def canonical_json(value: Any) -> str:
    """Canonical JSON text of a value that is already JSON-compatible."""
    return _dumps(value)


def to_display(tree: Any) -> Any:
    """A stored canonical value as the user wrote it, for people (CLI, dashboard): gflow's tags removed,
    pydantic models and dataclasses as their fields, tuples and sets as lists, blobs summarised. Pure:
    it imports and calls nothing, so it is safe on untrusted stored data. Accepts the JSON text too."""
    if isinstance(tree, (str, bytes)) and not isinstance(tree, str):
        tree = json.loads(tree)
    t = type(tree)
    if t is list:
        return [to_display(v) for v in tree]
    if t is not dict:
        return tree
    tag = tree.get(TAG)
    if tag is None:
        return {k: to_display(v) for k, v in tree.items()}
    if tag in ("model", "dataclass"):
        return to_display(tree.get("data"))
    if tag in ("tuple", "set", "frozenset"):
        return [to_display(v) for v in tree.get("items", [])]
    if tag == "dict":
        out: dict[str, Any] = {}
        for kv in tree.get("items", []):
            if isinstance(kv, list) and len(kv) == 2:
                k = to_display(kv[0])
                out[k if isinstance(k, str) else json.dumps(k, sort_keys=True)] = to_display(kv[1])
        return out
    if tag in ("float", "path", "datetime", "date"):
        return tree.get("v")
    if tag == "enum":
        return to_display(tree.get("v"))
    if tag == "bytes":
        return f"<{len(base64.b64decode(tree.get('b64', ''), validate=False))} bytes>"
    if tag in ("ndarray", "tensor"):
        return {"dtype": tree.get("dtype"), "shape": tree.get("shape"), "blob": tree.get("blob")}
    if tag == "pickle":
        return "<pickled value>"
    return {k: to_display(v) for k, v in tree.items()}


def display_json(text: str | bytes | None) -> Any:
    """:func:`to_display` of stored canonical JSON text (the text itself if it is not JSON)."""
    if text is None:
        return None
    try:
        return to_display(json.loads(text))
    except ValueError:
        return text
