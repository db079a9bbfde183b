"""Flows: the ``@flow`` decorator, futures and the engine."""

from gflow.flows._core import Node, Scheduler
from gflow.flows._engine import Engine, compute_key
from gflow.flows._flow import Flow, FlowRun, RunResult, flow, new_run_id
from gflow.flows._future import Future

__all__ = ["Engine", "Flow", "FlowRun", "Future", "Node", "RunResult", "Scheduler", "compute_key", "flow",
           "new_run_id"]
