import dataclasses
import math

import pytest

import gflow
from gflow.objects import Protein, Score
from gflow.serialization import decode, encode


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float


def roundtrip(v):
    e = encode(v)
    return decode(e.data, e.blobs.__getitem__)


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, "héllo", [1, "a", None], (1, (2, 3)), {"b": 1, "a": [1, 2]}, {1: "x", (2, 3): "y"},
    {3, 1, 2}, frozenset({"a"}), b"\x00\xff", Point(1, 2.0), Protein(sequence="MKT", name="p"),
    [Score(name="s", value=1.5)], float("inf"),
])
def test_roundtrip(value):
    assert roundtrip(value) == value
    assert type(roundtrip(value)) is type(value)


def test_nan_roundtrip():
    assert math.isnan(roundtrip(float("nan")))


def test_canonical_regardless_of_order():
    assert encode({"a": 1, "b": 2}).digest == encode({"b": 2, "a": 1}).digest
    assert encode({3, 2, 1}).digest == encode({1, 2, 3}).digest
    assert encode([1, 2]).digest != encode((1, 2)).digest
    assert encode(1).digest != encode(True).digest != encode("1").digest


def test_numpy_typed_blob():
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    e = encode({"emb": a})
    assert len(e.blobs) == 1 and b"ndarray" in e.data
    back = decode(e.data, e.blobs.__getitem__)["emb"]
    assert back.dtype == np.float32 and back.shape == (3, 4) and (back == a).all()
    assert encode(a).digest == encode(a.copy()).digest
    assert encode(a).digest != encode(a.astype(np.float64)).digest


class Thing:
    pass


def test_refuses_unknown_objects_unless_pickle():
    with pytest.raises(gflow.SerializationError, match="Thing.*pickle=True"):
        encode(Thing(), where="argument 'x'")
    assert b"pickle" in encode(Thing(), allow_pickle=True).data
