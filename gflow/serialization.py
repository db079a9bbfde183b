"""Canonical serialization of task inputs and outputs.

Values become canonical JSON (sorted keys, no whitespace, tagged containers) so that equal
inputs give equal bytes and so equal cache keys on any machine. Arrays and tensors become typed
blobs (raw bytes + dtype + shape) referenced from the JSON by their sha256; the blobs travel
through the artifact store. Anything else is refused unless the task opted into pickle; pickles
are signed (HMAC, :mod:`gflow._signing`).

Decoding treats its input as untrusted (docs/RELIABILITY.md, "Trust model for stored data"): it
constructs only Enum members, pydantic models (validated by their own validators), dataclasses
(fields restored without calling ``__init__``/``__post_init__``, as ``copy``/``pickle`` do), gflow
objects and builtin values; it resolves types only from modules already imported (and gflow's own
objects) and never calls anything a stored path names; it unpickles only when the caller allows it
for the task and the pickle carries a valid signature. Any malformed or refused value raises
:class:`~gflow.errors.SerializationError` naming ``where``; values nested deeper than
:data:`MAX_DEPTH` are refused the same way, in both directions.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import enum
import hashlib
import importlib
import json
import math
import pathlib
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from gflow import _resolve
from gflow._display import display_json, to_display, to_json_text
from gflow.errors import GflowError, SerializationError

TAG = "__gflow__"
#: values nested deeper than this are refused (encode, decode, ``--param``), never a RecursionError
MAX_DEPTH = 100
#: levels gflow's own envelopes may add around a value (flow arguments, a call's args/kwargs): a value
#: of MAX_DEPTH levels still encodes and decodes inside them
ENVELOPE_DEPTH = 4
_LIMIT = MAX_DEPTH + ENVELOPE_DEPTH
#: ints wider than this many bits are stored as hex (``{"__gflow__": "int"}``): their decimal form would
#: pass Python's 4,300-digit int/str limit. Fixed, so the canonical form never depends on that setting.
BIG_INT_BITS = 14_000
_PRIMITIVES = frozenset({str, bool, type(None)})
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_HEX_INT = re.compile(r"-?0x[0-9a-f]+\Z")
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

__all__ = ["BIG_INT_BITS", "ENVELOPE_DEPTH", "MAX_DEPTH", "TAG", "Encoded", "canonical_json", "decode", "display_json",
           "encode", "from_jsonable", "import_path", "to_display", "to_json_text", "to_jsonable", "type_path"]


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
    """Import ``module:qualname`` (or ``module.attr``) and return the object.

    For trusted configuration only (a profile's executor or store class, a task the program names);
    never for a path read from stored data, which goes through :mod:`gflow._resolve`.
    """
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


class _Encoder:
    __slots__ = ("blobs", "allow_pickle", "where", "key")

    def __init__(self, blobs: dict[str, bytes], allow_pickle: bool, where: str, key: str | bytes | None):
        self.blobs, self.allow_pickle, self.where, self.key = blobs, allow_pickle, where, key

    def tree(self, value: Any, depth: int) -> Any:  # noqa: C901 - one dispatch on the value's type
        t = type(value)
        if t in _PRIMITIVES:
            return value
        if t is int:
            return value if value.bit_length() <= BIG_INT_BITS else {TAG: "int", "hex": hex(value)}
        if t is float:
            return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
        if depth >= _LIMIT:
            raise SerializationError(f"{self.where}: nested more than {MAX_DEPTH} levels deep; gflow refuses deeper "
                                     f"values (flatten it, or pass it as a file or array)")
        d = depth + 1
        if t is list:
            return [v if type(v) in _PRIMITIVES else self.tree(v, d) for v in value]
        if t is dict and all(type(k) is str for k in value) and TAG not in value:
            if depth == 0:  # arguments by name: an error names the key
                return {k: v if type(v) in _PRIMITIVES else self.keyed(k, v) for k, v in value.items()}
            return {k: v if type(v) in _PRIMITIVES else self.tree(v, d) for k, v in value.items()}
        if isinstance(value, BaseModel):
            try:
                data = value.model_dump(mode="json")
            except Exception as e:  # a model holding arbitrary types
                if self.allow_pickle:
                    return self.pickled(value)
                raise SerializationError(f"{self.where}: pydantic model {type_path(t)} is not JSON-serializable: "
                                         f"{e}") from e
            _check_depth(data, d, self.where)
            return {TAG: "model", "type": type_path(t), "data": data}
        if t is tuple:
            return {TAG: "tuple", "items": [self.tree(v, d) for v in value]}
        if isinstance(value, Mapping):
            items = [[self.tree(k, d), self.tree(v, d)] for k, v in value.items()]
            items.sort(key=lambda kv: _dumps(kv[0]))
            return {TAG: "dict", "items": items}
        if isinstance(value, (set, frozenset)):
            items = sorted((self.tree(v, d) for v in value), key=_dumps)
            return {TAG: "frozenset" if isinstance(value, frozenset) else "set", "items": items}
        if isinstance(value, enum.Enum):
            v = value.value
            return {TAG: "enum", "type": type_path(t), "v": v if type(v) in (str, bool) else self.tree(v, d)}
        if isinstance(value, (bytes, bytearray)):
            return {TAG: "bytes", "b64": base64.b64encode(bytes(value)).decode()}
        if isinstance(value, pathlib.PurePath):
            return {TAG: "path", "v": str(value)}
        if isinstance(value, _dt.datetime):
            return {TAG: "datetime", "v": value.isoformat()}
        if isinstance(value, _dt.date):
            return {TAG: "date", "v": value.isoformat()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            data = {f.name: self.tree(getattr(value, f.name), d) for f in dataclasses.fields(value)}
            return {TAG: "dataclass", "type": type_path(t), "data": data}
        mod = t.__module__
        if mod == "numpy" and t.__name__ == "ndarray":
            if value.dtype.hasobject:
                if self.allow_pickle:
                    return self.pickled(value)
                raise SerializationError(f"{self.where}: numpy arrays of dtype object cannot be serialized")
            import numpy as np

            arr = np.ascontiguousarray(value)
            return {TAG: "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape),
                    "blob": _blob(self.blobs, arr.tobytes())}
        if mod.startswith("numpy") and hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
            return self.tree(value.item(), d)
        if mod == "torch" and t.__name__ in ("Tensor", "Parameter"):
            tensor = value.detach().to("cpu").contiguous()
            raw = tensor.view(-1).view(_torch().uint8).numpy().tobytes() if tensor.numel() else b""
            return {TAG: "tensor", "dtype": str(tensor.dtype), "shape": list(tensor.shape),
                    "blob": _blob(self.blobs, raw)}
        if self.allow_pickle:
            return self.pickled(value)
        raise SerializationError(
            f"{self.where}: cannot serialize a value of type {type_path(t)}; use primitives, containers, pydantic "
            f"models (gflow.objects), dataclasses, numpy arrays or torch tensors, or set pickle=True on the task"
        )

    def keyed(self, key: str, value: Any) -> Any:
        try:
            return self.tree(value, 1)
        except SerializationError as e:
            msg, prefix = str(e), f"{self.where}: "
            if not msg.startswith(prefix):
                raise
            raise SerializationError(f"{self.where}: {key[:100]!r}: {msg[len(prefix):]}") from e.__cause__

    def pickled(self, value: Any) -> dict:
        from gflow._signing import sign

        try:
            raw = pickle.dumps(value, protocol=5)
        except Exception as e:
            raise SerializationError(f"{self.where}: cannot pickle a {type_path(type(value))}: {e}") from e
        digest = _blob(self.blobs, raw)
        return {TAG: "pickle", "blob": digest, "sig": sign(digest, self.key)}


def _torch() -> Any:
    import torch

    return torch


def _check_depth(tree: Any, depth: int, where: str) -> None:
    """Refuse a plain JSON tree (a model's data) nested past :data:`MAX_DEPTH` (iterative: no recursion)."""
    stack = [(tree, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        node, d = pop()
        t = type(node)
        if t is not dict and t is not list:
            continue
        if d >= _LIMIT:
            raise SerializationError(f"{where}: nested more than {MAX_DEPTH} levels deep; refused")
        for c in node.values() if t is dict else node:
            tc = type(c)
            if tc is dict or tc is list:
                push((c, d + 1))


def to_jsonable(value: Any, blobs: dict[str, bytes], allow_pickle: bool = False, where: str = "value", *,
                signing_key: str | bytes | None = None) -> Any:
    """Convert ``value`` to a JSON-compatible tree; binary payloads are added to ``blobs``.

    Args:
        allow_pickle: Pickle (and sign) values that have no canonical form.
        where: What the value is, for errors (e.g. ``argument 'x' of task 'score'``).
        signing_key: The key pickles are signed with (default: :func:`gflow._signing.signing_key`).

    Raises:
        SerializationError: naming ``where`` and the offending type, or a value nested too deep.
    """
    return _Encoder(blobs, allow_pickle, where, signing_key).tree(value, 0)


def encode(value: Any, *, allow_pickle: bool = False, where: str = "value",
           signing_key: str | bytes | None = None) -> Encoded:
    """Encode ``value`` canonically; see the module docstring."""
    t = type(value)
    if t is int and -(2**53) < value < 2**53:  # the common trivial result, without the JSON encoder
        return Encoded(str(value).encode(), {})
    if value is None:
        return Encoded(b"null", {})
    blobs: dict[str, bytes] = {}
    tree = to_jsonable(value, blobs, allow_pickle, where, signing_key=signing_key)
    try:
        data = _dumps(tree).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise SerializationError(f"{where}: {e}") from e
    return Encoded(data, blobs)


# -- decoding: untrusted input ---------------------------------------------------------------------------
class _Decoder:
    __slots__ = ("load_blob", "allow_pickle", "key", "where")

    def __init__(self, load_blob: Callable[[str], bytes], allow_pickle: bool, key: str | bytes | None, where: str):
        self.load_blob, self.allow_pickle, self.key, self.where = load_blob, allow_pickle, key, where

    def fail(self, message: str) -> SerializationError:
        return SerializationError(f"{self.where}: {message}")

    def value(self, tree: Any, depth: int) -> Any:  # noqa: C901 - one dispatch on the tag
        t = type(tree)
        if t is not list and t is not dict:
            return tree
        if depth >= _LIMIT:
            raise self.fail(f"nested more than {MAX_DEPTH} levels deep; refused")
        d = depth + 1
        if t is list:
            return [v if type(v) in _JSON_SCALARS else self.value(v, d) for v in tree]
        tag = tree.get(TAG)
        if tag is None:
            return {k: v if type(v) in _JSON_SCALARS else self.value(v, d) for k, v in tree.items()}
        if tag == "tuple":
            return tuple(self.value(v, d) for v in _list(tree, "items"))
        if tag == "dict":
            out = {}
            for kv in _list(tree, "items"):
                if type(kv) is not list or len(kv) != 2:
                    raise self.fail("a dict item is not a [key, value] pair")
                out[_hashable(self.value(kv[0], d))] = self.value(kv[1], d)
            return out
        if tag in ("set", "frozenset"):
            items = [_hashable(self.value(v, d)) for v in _list(tree, "items")]
            return set(items) if tag == "set" else frozenset(items)
        if tag == "float":
            v = tree.get("v")
            if v not in _NON_FINITE:
                raise self.fail(f"a tagged float must be one of {sorted(_NON_FINITE)}, not {v!r:.40}")
            return _NON_FINITE[v]
        if tag == "int":
            h = tree.get("hex")
            if type(h) is not str or not _HEX_INT.match(h):
                raise self.fail("a tagged int needs a 'hex' like '0x1f' or '-0x1f'")
            return int(h, 16)
        if tag == "bytes":
            return base64.b64decode(_str(tree, "b64"), validate=True)
        if tag == "path":
            return pathlib.Path(_str(tree, "v"))
        if tag == "datetime":
            return _dt.datetime.fromisoformat(_str(tree, "v"))
        if tag == "date":
            return _dt.date.fromisoformat(_str(tree, "v"))
        if tag == "enum":
            return self.enum(tree, d)
        if tag == "model":
            return self.model(tree, d)
        if tag == "dataclass":
            return self.dataclass(tree, d)
        if tag == "ndarray":
            return self.ndarray(tree)
        if tag == "tensor":
            return self.tensor(tree)
        if tag == "pickle":
            return self.unpickle(tree)
        raise self.fail(f"unknown gflow tag {tag!r:.40}")

    def enum(self, tree: dict, d: int) -> Any:
        cls = _resolve.resolve_type(tree.get("type"), "enum")
        v = self.value(tree.get("v"), d)
        try:
            return cls(v)  # a value lookup (EnumType.__call__ with one argument); never the functional API
        except ValueError as e:
            raise self.fail(f"{tree['type']}: {e}") from None

    def model(self, tree: dict, d: int) -> Any:
        cls: Any = _resolve.resolve_type(tree.get("type"), "model")
        data = tree.get("data")
        _check_depth(data, d, self.where)
        try:
            return cls.model_validate(data)
        except Exception as e:  # noqa: BLE001 - a validator's own error: the stored data is bad
            raise self.fail(f"stored {tree['type']} is invalid: {e}") from None

    def dataclass(self, tree: dict, d: int) -> Any:
        cls = _resolve.resolve_type(tree.get("type"), "dataclass")
        data = tree.get("data")
        if type(data) is not dict:
            raise self.fail(f"stored {tree['type']} has no field mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        for k in data:
            if k not in names:
                raise self.fail(f"{tree['type']} has no field {k!r:.40}")
        for k in names:
            if k not in data:
                raise self.fail(f"stored {tree['type']} lacks field {k!r}")
        try:  # restored like copy/pickle do: __init__ and __post_init__ ran when the value was made
            obj: Any = object.__new__(cls)
        except TypeError as e:
            raise self.fail(f"{tree['type']} cannot be restored: {e}") from None
        for k, v in data.items():
            object.__setattr__(obj, k, self.value(v, d))
        return obj

    def ndarray(self, tree: dict) -> Any:
        np = _optional("numpy", "array")

        dtype = np.dtype(_str(tree, "dtype"))
        if dtype.hasobject:
            raise self.fail("a stored array of dtype object is refused (it would hold Python objects)")
        shape = _shape(tree)
        raw = self.load_blob(_str(tree, "blob"))
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise self.fail(f"array blob holds {len(raw)} bytes, not {shape} x {dtype}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    def tensor(self, tree: dict) -> Any:
        torch = _optional("torch", "tensor")
        name = _str(tree, "dtype").removeprefix("torch.")
        dtype = vars(torch).get(name) if name.isidentifier() else None
        if not isinstance(dtype, torch.dtype):
            raise self.fail(f"{tree['dtype']!r:.40} is not a torch dtype")
        shape = _shape(tree)
        raw = bytearray(self.load_blob(_str(tree, "blob")))
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise self.fail(f"tensor blob holds {len(raw)} bytes, not {shape} x {dtype}")
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(shape).clone()

    def unpickle(self, tree: dict) -> Any:
        from gflow._signing import verify

        digest = _str(tree, "blob")
        if not self.allow_pickle:
            raise self.fail(f"holds a pickled value ({digest}), but pickle is not allowed here: only a task "
                            f"declared with pickle=True reads pickles")
        sig = tree.get("sig")
        if sig is None:
            raise self.fail(f"the pickled value {digest} is not signed; gflow unpickles only signed values")
        if not verify(digest, sig, self.key):
            raise self.fail(f"the pickled value {digest} has a bad signature: it was not signed with this signing "
                            f"key (GFLOW_SIGNING_KEY, or the home's signing.key); refused")
        raw = self.load_blob(digest)
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            raise self.fail(f"the pickled blob does not match its digest {digest}; refused")
        try:
            return pickle.loads(raw)
        except Exception as e:  # noqa: BLE001 - a signed pickle whose classes are missing here
            raise self.fail(f"cannot unpickle {digest}: {type(e).__name__}: {e}") from None


def _optional(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)  # a fixed name, never one read from the data
    except ImportError:
        raise SerializationError(f"the value holds a {what}, but {module} is not installed here") from None


def _list(tree: dict, key: str) -> list:
    v = tree.get(key)
    if type(v) is not list:
        raise SerializationError(f"tagged {tree.get(TAG)!r:.40} needs a list {key!r}")
    return v


def _str(tree: dict, key: str) -> str:
    v = tree.get(key)
    if type(v) is not str:
        raise SerializationError(f"tagged {tree.get(TAG)!r:.40} needs a string {key!r}")
    return v


def _shape(tree: dict) -> list[int]:
    shape = tree.get("shape")
    if type(shape) is not list or len(shape) > 64 or not all(type(n) is int and 0 <= n < 2**62 for n in shape):
        raise SerializationError(f"tagged {tree.get(TAG)!r:.40} needs a shape of non-negative ints")
    return shape


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if type(v) is list else v


def from_jsonable(tree: Any, load_blob: Callable[[str], bytes], *, allow_pickle: bool = False,
                  signing_key: str | bytes | None = None, where: str = "value") -> Any:
    """Inverse of :func:`to_jsonable`, on untrusted input (see the module docstring).

    Args:
        load_blob: Fetches a blob by digest (``ArtifactStore.get``, which verifies it).
        allow_pickle: Decode signed pickles (only for a task declared with ``pickle=True``).
        signing_key: The key pickles must be signed with (default: :func:`gflow._signing.signing_key`).
        where: What the value is, for errors.

    Raises:
        SerializationError: a malformed or refused value, naming ``where``.
        ArtifactNotFound: a blob it references is missing or corrupt.
    """
    try:
        return _Decoder(load_blob, allow_pickle, signing_key, where).value(tree, 0)
    except GflowError as e:
        if isinstance(e, SerializationError) and not str(e).startswith(where):
            raise SerializationError(f"{where}: {e}") from None
        raise
    except RecursionError:
        raise SerializationError(f"{where}: nested too deep to decode") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, binascii.Error) as e:
        raise SerializationError(f"{where}: malformed stored value: {type(e).__name__}: {e}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (gflow stores non-finite floats as tagged values)")


_loads = json.JSONDecoder(parse_constant=_refuse_constant).decode  # built once: json.loads(**kw) builds one a call


def decode(data: bytes | str, load_blob: Callable[[str], bytes] | None = None, *, allow_pickle: bool = False,
           signing_key: str | bytes | None = None, where: str = "value") -> Any:
    """Decode canonical JSON produced by :func:`encode`; arguments as :func:`from_jsonable`."""

    def _no_blobs(digest: str) -> bytes:
        raise SerializationError(f"{where}: value references blob {digest} but no artifact store was given")

    try:
        tree = _loads(data if isinstance(data, str) else data.decode())
    except RecursionError:
        raise SerializationError(f"{where}: nested too deep to decode") from None
    except (TypeError, ValueError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
        raise SerializationError(f"{where}: not gflow's canonical JSON: {e}") from None
    return from_jsonable(tree, load_blob or _no_blobs, allow_pickle=allow_pickle, signing_key=signing_key,
                         where=where)


def canonical_json(value: Any) -> str:
    """Canonical JSON text of a value that is already JSON-compatible."""
    return _dumps(value)
