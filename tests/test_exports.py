import gflow
import gflow.objects


def test_public_api_pinned():
    assert sorted(gflow.__all__) == sorted([
        "ArtifactNotFound", "Cancelled", "ConfigError", "Executor", "Flow", "FlowFailed", "Future", "GflowError",
        "InvalidArguments", "InvalidTransition", "Resources", "Retry", "RunNotFound", "RunResult",
        "SerializationError", "State", "StoreError", "Task", "TaskFailed", "TaskTimeout", "UpstreamFailed",
        "__version__", "flow", "get_executor", "register_executor", "task",
    ])
    for name in gflow.__all__:
        assert hasattr(gflow, name)


def test_executor_registry_by_name_and_entry_point():
    from gflow.executors import known_executors
    from gflow.executors.local import InlineExecutor, LocalExecutor

    assert {"local", "inline", "dask", "aws_batch", "volcano", "docker"} <= set(known_executors())
    ex = gflow.get_executor("local://processes?workers=1")
    assert isinstance(ex, LocalExecutor) and ex.processes and ex.workers == 1
    ex.close()
    assert isinstance(gflow.get_executor("inline"), InlineExecutor)

    class Mine(InlineExecutor):
        name = "mine"

    gflow.register_executor("mine", lambda spec: Mine())
    assert isinstance(gflow.get_executor("mine://x"), Mine)
