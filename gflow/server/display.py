"""Stored values for people: params and results as the user wrote them, the gflow objects inside them
(a protein's sequence, a molecule's SMILES with a 2D depiction when RDKit is installed, scores), and
long texts (a 5 MB traceback) cut to an excerpt.

Everything here works on untrusted stored JSON without importing or calling anything it names
(:func:`gflow.serialization.to_display` is pure); a value that nests too deeply or is too big is
summarised, never an error.
"""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import dataclass
from typing import Any

from gflow.serialization import TAG, to_display

MAX_VALUE_CHARS = 1_000_000  # bigger stored JSON is not decoded for display
MAX_OBJECTS = 50
MAX_SMILES = 500
_OBJECT_MODULE = "gflow.objects."


@dataclass
class Excerpt:
    text: str
    size: int
    truncated: bool
    omitted: int


def excerpt(text: str | None, head: int, tail: int) -> Excerpt | None:
    """The first ``head`` and last ``tail`` characters of ``text``, with a marker where the middle was cut."""
    if text is None:
        return None
    head, tail = max(0, head), max(0, tail)
    n = len(text)
    if n <= head + tail:
        return Excerpt(text, n, False, 0)
    omitted = n - head - tail
    cut = f"\n\n... {omitted:,} characters omitted (show all to see them) ...\n\n"
    return Excerpt(text[:head] + cut + (text[n - tail:] if tail else ""), n, True, omitted)


def first_line(text: str | None, limit: int = 160) -> str | None:
    if not text:
        return None
    line = text.split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


@dataclass
class ObjectInfo:
    kind: str  # Protein, Molecule, Score, ...
    type: str  # the stored type path (module:qualname), for reference only: never imported
    data: Any  # its fields as the user wrote them
    depiction_svg: str | None = None


@dataclass
class ValueInfo:
    display: Any
    objects: list[ObjectInfo]
    size: int
    truncated: bool
    source: str  # "inline" | "artifact" | "none"


def _objects(tree: Any, limit: int = MAX_OBJECTS) -> list[ObjectInfo]:
    """The gflow objects inside a canonical tree, breadth first, at most ``limit`` (iterative)."""
    found: list[ObjectInfo] = []
    queue: list[tuple[Any, int]] = [(tree, 0)]
    i = 0
    while i < len(queue) and len(found) < limit and i < 100_000:
        node, depth = queue[i]
        i += 1
        if depth > 64:
            continue
        if isinstance(node, list):
            queue.extend((v, depth + 1) for v in node)
        elif isinstance(node, dict):
            tag, typ = node.get(TAG), node.get("type")
            if tag == "model" and isinstance(typ, str) and typ.startswith(_OBJECT_MODULE):
                data = _display(node.get("data"))
                kind = typ.rsplit(":", 1)[-1]
                svg = depict(data.get("smiles")) if kind == "Molecule" and isinstance(data, dict) else None
                found.append(ObjectInfo(kind=kind, type=typ, data=data, depiction_svg=svg))
                continue
            queue.extend((v, depth + 1) for v in node.values())
    return found


def _display(tree: Any) -> Any:
    try:
        return to_display(tree)
    except RecursionError:
        return "<value nests too deeply to show>"


def value_info(text: str | None, source: str) -> ValueInfo | None:
    """A stored canonical JSON value for display (None when there is none)."""
    if text is None:
        return None
    size = len(text)
    if size > MAX_VALUE_CHARS:
        return ValueInfo(display=f"<{size:,} characters of JSON: too big to show here>", objects=[], size=size,
                         truncated=True, source=source)
    try:
        tree = json.loads(text)
    except RecursionError:
        return ValueInfo(display="<value nests too deeply to show>", objects=[], size=size, truncated=True,
                         source=source)
    except ValueError:
        return ValueInfo(display=text, objects=[], size=size, truncated=False, source=source)
    return ValueInfo(display=_display(tree), objects=_objects(tree), size=size, truncated=False, source=source)


def display_params(text: str | None) -> Any:
    """A run's params as the user wrote them."""
    info = value_info(text, "inline")
    return None if info is None else info.display


@functools.lru_cache(maxsize=256)
def depict(smiles: Any) -> str | None:
    """A 2D depiction of a SMILES string as SVG text, when RDKit is installed (None otherwise)."""
    if not isinstance(smiles, str) or not smiles or len(smiles) > MAX_SMILES:
        return None
    try:  # through importlib: RDKit is optional, and its stubs differ between versions
        chem: Any = importlib.import_module("rdkit.Chem")
        draw: Any = importlib.import_module("rdkit.Chem.Draw.rdMolDraw2D")
        rdlog: Any = importlib.import_module("rdkit.RDLogger")
    except ImportError:
        return None
    try:
        rdlog.DisableLog("rdApp.*")
        mol = chem.MolFromSmiles(smiles)
        if mol is None:
            return None
        drawer = draw.MolDraw2DSVG(240, 180)
        drawer.drawOptions().clearBackground = False
        drawer.DrawMolecule(mol)
        drawer.FinishDrawing()
        return str(drawer.GetDrawingText())
    except Exception:  # noqa: BLE001 - a depiction is a nicety; the SMILES is still shown
        return None
