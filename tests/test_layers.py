"""The floors of gflow's packages (docs/architecture.md): what each package may import, pinned two ways.

1. Each package is imported in a fresh interpreter, with gflow's own ``__init__`` (which imports
   everything users need) stood in for by a bare package, and the gflow packages it pulled in are compared
   with what its floor allows.
2. The source is read (imports inside functions count, ``if TYPE_CHECKING:`` blocks do not): the import
   cycles that were broken (flows <-> executors <-> tasks, objects/fasta <-> protein, store/_writer <->
   sqlite) stay broken, and no package reaches into another's private module where a public name exists.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GFLOW = ROOT / "gflow"

_PROBE = r"""
import importlib, json, sys, types
pkg = types.ModuleType("gflow")
pkg.__path__ = [sys.argv[1]]
sys.modules["gflow"] = pkg
try:
    importlib.import_module(sys.argv[2])
except ImportError as e:
    if (e.name or "").startswith("gflow"):
        raise
    print(json.dumps({"missing": e.name}))
    raise SystemExit(0)
print(json.dumps({"loaded": sorted({".".join(m.split(".")[:2]) for m in sys.modules if m.startswith("gflow.")})}))
"""

#: module imported -> gflow packages it must never pull in
FLOORS: dict[str, set[str]] = {
    "gflow.artifacts": {"gflow.executors", "gflow.flows", "gflow.store", "gflow.objects", "gflow.tasks",
                        "gflow.images", "gflow.server"},
    "gflow.artifacts.s3": {"gflow.executors", "gflow.flows", "gflow.store", "gflow.images"},
    "gflow.objects": {"gflow.executors", "gflow.flows", "gflow.store", "gflow.artifacts", "gflow.tasks",
                      "gflow.images", "gflow.server", "gflow.serialization"},
    "gflow.clouds.aws": {"gflow.executors", "gflow.artifacts", "gflow.flows", "gflow.store"},
    "gflow.tasks": {"gflow.flows", "gflow.executors", "gflow.store", "gflow.artifacts", "gflow.images"},
    "gflow.serialization": {"gflow.flows", "gflow.executors", "gflow.store", "gflow.tasks", "gflow.objects"},
    "gflow.store": {"gflow.executors", "gflow.flows", "gflow.artifacts", "gflow.tasks", "gflow.images",
                    "gflow.objects", "gflow.server"},
    "gflow.store.sqlite": {"gflow.executors", "gflow.flows", "gflow.artifacts", "gflow.tasks", "gflow.server"},
    "gflow.executors": {"gflow.store", "gflow.flows", "gflow.server", "gflow.cli"},
    "gflow.executors.polling": {"gflow.store", "gflow.flows", "gflow.artifacts", "gflow.images", "gflow.server"},
    "gflow.executors.local": {"gflow.store", "gflow.flows", "gflow.server"},
    "gflow.executors.dask": {"gflow.store", "gflow.flows", "gflow.server"},
    "gflow.executors.docker": {"gflow.store", "gflow.flows", "gflow.server"},
    "gflow.executors.aws_batch": {"gflow.store", "gflow.flows", "gflow.server"},
    "gflow.executors.volcano": {"gflow.store", "gflow.flows", "gflow.server"},
    "gflow.flows": {"gflow.server", "gflow.cli", "gflow.images"},
}


def _loaded(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(GFLOW), module], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if "missing" in got:
        pytest.skip(f"{module} needs {got['missing']} (an extra that is not installed)")
    return set(got["loaded"])


@pytest.mark.parametrize("module", sorted(FLOORS))
def test_a_package_imports_nothing_above_its_floor(module):
    loaded = _loaded(module)
    assert module.split(".")[0] + "." + module.split(".")[1] in loaded
    assert not loaded & FLOORS[module], f"{module} pulls in {sorted(loaded & FLOORS[module])}"


def test_the_lowest_floors_are_tiny():
    assert _loaded("gflow.objects") <= {"gflow.objects", "gflow.errors"}
    assert _loaded("gflow.clouds.aws") <= {"gflow.clouds", "gflow.errors"}
    assert _loaded("gflow.executors") <= {"gflow.executors", "gflow.errors", "gflow.states", "gflow.tasks",
                                          "gflow._context"}


# -- the source, function-local imports included --------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Modules ``path`` imports anywhere (also inside functions), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]  # "from pkg import submodule"
    return out


def _edges(files: list[Path], target: str) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in files for name, line in _imports(p)
            if name == target or name.startswith(target + ".")]


def _files(where: str) -> list[Path]:
    p = ROOT / where
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


@pytest.mark.parametrize("importer,target", [
    ("gflow/tasks", "gflow.flows"),            # flows -> tasks only (Task.run reaches flows through _context)
    ("gflow/tasks", "gflow.executors"),
    ("gflow/executors", "gflow.flows"),        # the engine calls executors; executors report by events
    ("gflow/executors", "gflow.store"),        # executors never touch the state store
    ("gflow/artifacts", "gflow.executors"),    # the S3 store and AWS Batch share gflow.clouds.aws
    ("gflow/artifacts", "gflow.flows"),
    ("gflow/objects", "gflow.executors"),
    ("gflow/objects", "gflow.flows"),
    ("gflow/objects/fasta.py", "gflow.objects.protein"),  # protein reads and writes FASTA, not the reverse
    ("gflow/store/_writer.py", "gflow.store.sqlite"),     # the writer's child process imports sqlite instead
    ("gflow/store", "gflow.flows"),
    ("gflow/store", "gflow.executors"),
    ("gflow/clouds", "gflow.executors"),
    ("gflow/clouds", "gflow.artifacts"),
])
def test_no_import_crosses_a_floor_even_inside_a_function(importer, target):
    assert _edges(_files(importer), target) == []


def test_the_cycles_are_gone():
    """Package-level cycles among the lower floors (the import graph of gflow's source, every import counted)."""
    units = ["gflow.tasks", "gflow.executors", "gflow.flows", "gflow.store", "gflow.artifacts", "gflow.objects",
             "gflow.clouds", "gflow.serialization"]

    def unit(name: str) -> str | None:
        return next((u for u in units if name == u or name.startswith(u + ".")), None)

    graph: dict[str, set[str]] = {u: set() for u in units}
    for p in GFLOW.rglob("*.py"):
        src = unit(_module_name(p))
        if src is None:
            continue
        for name, _ in _imports(p):
            dst = unit(name)
            if dst is not None and dst != src:
                graph[src].add(dst)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and (seen.add(n) or reaches(n, b, seen))) for n in graph[a])

    cycles = [(a, b) for a in units for b in graph[a] if reaches(b, a, set())]
    assert cycles == []


def test_no_private_module_of_another_package_is_imported():
    """Names shared across packages are public (executors.base.qualname, serialization.canonical_json,
    store.registry_id, extras.require); the one deliberate exception is gflow.extras re-exporting
    gflow.objects._deps (gflow.objects is another engineer's floor, see docs/architecture.md)."""
    allowed = {("gflow/extras.py", "gflow.objects._deps")}
    bad = []
    for p in GFLOW.rglob("*.py"):
        mod = _module_name(p)
        top = ".".join(mod.split(".")[:2])
        for name, line in _imports(p):
            parts = name.split(".")
            if name.startswith("gflow.") and ".".join(parts[:2]) != top and any(x.startswith("_") and
                                                                                not x.startswith("__")
                                                                                for x in parts[2:]):
                if not any(str(p.relative_to(ROOT)) == f and (name == m or name.startswith(m + "."))
                           for f, m in allowed):
                    bad.append(f"{p.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []
