"""Flows: the ``@flow`` decorator, futures and the engine."""

from gflow.flows._core import Node, Scheduler
from gflow.flows._engine import Engine, compute_key
from gflow.flows._flow import Flow, FlowRun, RunResult, cancel_run, flow, new_run_id
from gflow.flows._future import Future

__all__ = ["Engine", "Flow", "FlowRun", "Future", "Node", "RunResult", "Scheduler", "cancel_run", "compute_key", "flow",
           "new_run_id"]
