import gflow
import gflow.objects


def test_public_api_pinned():
    assert sorted(gflow.__all__) == sorted([
        "ArtifactCorrupt", "ArtifactNotFound", "ArtifactStoreError", "Cancelled", "ConfigError", "Executor",
        "ExecutorError", "Flow",
        "Failed", "FlowFailed", "Future", "GflowError", "Image", "InvalidArguments", "InvalidTransition", "OutOfMemory",
        "Preempted", "Resources",
        "ResumeRefused", "Retry", "RunNotFound", "RunResult",
        "SerializationError", "State", "StoreError", "Task", "TaskFailed", "TaskTimeout", "UpstreamFailed",
        "__version__", "cancel_run", "flow", "get_executor", "register_executor", "task", "warm",
    ])
    for name in gflow.__all__:
        assert hasattr(gflow, name)


def test_executor_registry_by_name_and_entry_point():
    from gflow.executors import known_executors
    from gflow.executors.local import InlineExecutor, LocalExecutor

    assert {"local", "inline", "dask", "docker"} <= set(known_executors())
    # a registry lists only backends that exist: no install hint for modules that are not there
    for name in known_executors():
        if name in ("local", "threads", "processes", "inline", "dask", "docker"):
            continue
        assert gflow.get_executor.__module__  # third-party entry points may add more
    ex = gflow.get_executor("local://processes?workers=1")
    assert isinstance(ex, LocalExecutor) and ex.processes and ex.workers == 1
    ex.close()
    assert isinstance(gflow.get_executor("inline"), InlineExecutor)

    class Mine(InlineExecutor):
        name = "mine"

    gflow.register_executor("mine", lambda spec: Mine())
    assert isinstance(gflow.get_executor("mine://x"), Mine)


def test_executor_from_entry_point(tmp_path, monkeypatch):
    """A third-party package registers an executor through the gflow.executors entry-point group."""
    pkg = tmp_path / "thirdparty_exec.py"
    pkg.write_text("from gflow.executors.local import InlineExecutor\n\n"
                   "class ThirdParty(InlineExecutor):\n    name = 'thirdparty'\n")
    dist = tmp_path / "thirdparty_exec-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-exec\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[gflow.executors]\nthirdparty = thirdparty_exec:ThirdParty\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from gflow.executors import known_executors

    assert "thirdparty" in known_executors()
    ex = gflow.get_executor("thirdparty")
    assert type(ex).__name__ == "ThirdParty"
    import flows_basic as fb

    assert fb.map_reduce.run(3, executor=ex) == 6
