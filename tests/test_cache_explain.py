"""``gflow cache explain`` (issue 22 item 4): a call that ran instead of hitting the cache, against the nearest
earlier call: the changed helper (code version), the changed argument (old and new digest), the changed image."""

from __future__ import annotations

import hashlib
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import gflow
from gflow.cli import main
from gflow.executors.local import InlineExecutor
from gflow.explain import ExplainError, explain

MODULE = '''
import gflow

SCALE = {scale}


def helper(x):
    return x * SCALE + {offset}


@gflow.task(cache=True)
def work(x: int, label: str = "a") -> int:
    return helper(x)


@gflow.flow
def pipeline(x: int, label: str = "a") -> int:
    return work(x, label=label)
'''


class ImageInline(InlineExecutor):
    """Inline, with the image key an image-based executor gives (a tag from the task's Image)."""

    def image_key(self, task):
        img = task.options.image
        return None if img is None else "img-" + hashlib.sha256(img.model_dump_json().encode()).hexdigest()[:12]


def _load(folder: Path, name: str, scale: int = 2, offset: int = 0):
    (folder / f"{name}.py").write_text(textwrap.dedent(MODULE.format(scale=scale, offset=offset)))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


@pytest.fixture
def modfolder(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _ran(store, run_id):
    (t,) = [t for t in store.task_runs(run_id) if t.name == "work"]
    return t


def test_changed_helper_is_named(modfolder, store) -> None:
    mod = _load(modfolder, "explain_code")
    first = mod.pipeline.run(3, executor="inline", return_run=True)
    assert first.value == 6
    mod = _load(modfolder, "explain_code", offset=1)  # helper's source changed, nothing else
    second = mod.pipeline.run(3, executor="inline", return_run=True)
    assert second.value == 7 and _ran(store, second.id).state is gflow.State.SUCCEEDED
    (d,) = explain(store, second.id, "work")
    assert d.earlier == _ran(store, first.id).id and not d.inputs_changed and d.image is None
    assert d.code == ["function explain_code.helper: changed"] and d.old_version != d.new_version
    res = CliRunner().invoke(main, ["cache", "explain", second.id, "work"])
    assert res.exit_code == 0 and "function explain_code.helper: changed" in res.output
    mod = _load(modfolder, "explain_code", scale=5, offset=1)  # a constant now
    third = mod.pipeline.run(3, executor="inline", return_run=True)
    (d,) = explain(store, third.id, "work")
    assert d.code == ["constant SCALE: changed"]


def test_changed_argument_is_named_with_digests(modfolder, store) -> None:
    mod = _load(modfolder, "explain_args")
    first = mod.pipeline.run(3, label="a", executor="inline", return_run=True)
    second = mod.pipeline.run(3, label="b", executor="inline", return_run=True)
    (d,) = explain(store, second.id, "explain_args:work")
    assert d.earlier == _ran(store, first.id).id and d.inputs_changed and not d.code
    ((name, old, new),) = d.inputs
    assert name == "label" and old.startswith("sha256:") and new.startswith("sha256:") and old != new
    assert any(line.startswith("  argument 'label': sha256:") for line in d.lines())


def test_changed_image_is_named(modfolder, store) -> None:
    mod = _load(modfolder, "explain_image")
    a = mod.pipeline.run(3, executor=ImageInline(), return_run=True)
    mod.pipeline.fn.__globals__["work"] = mod.work.with_options(image=gflow.Image(packages=["numpy"]))
    b = mod.pipeline.run(3, executor=ImageInline(), return_run=True)
    assert _ran(store, b.id).state is gflow.State.SUCCEEDED
    (d,) = explain(store, b.id, "work")
    assert d.earlier == _ran(store, a.id).id and not d.inputs_changed and not d.code
    assert d.image is not None and d.image[0] == "" and d.image[1].startswith("img-")
    assert "  image (none) -> img-" in "\n".join(d.lines())


def test_bad_input(modfolder, store) -> None:
    mod = _load(modfolder, "explain_bad")
    r = mod.pipeline.run(1, executor="inline", return_run=True)
    with pytest.raises(ExplainError, match="no run 'nope'"):
        explain(store, "nope", "work")
    with pytest.raises(ExplainError, match=f"run {r.id} has no call of task 'missing'"):
        explain(store, r.id, "missing")
    (d,) = explain(store, r.id, "work")
    assert d.earlier is None and "no earlier call" in d.lines()[0]
    res = CliRunner().invoke(main, ["cache", "explain", "nope", "work"])
    assert res.exit_code == 1 and "no run 'nope'" in res.output
