"""Flows: the ``@flow`` decorator, futures, the scheduling core and the engine."""

from gflow import _context
from gflow.flows._core import Core
from gflow.flows._engine import Engine
from gflow.flows._flow import Flow, FlowRun, RunResult, cancel_run, flow, new_run_id, task_flow
from gflow.flows._future import Future
from gflow.flows._keys import code_version, compute_key, compute_keys
from gflow.flows._provenance import INPUTS_TABLE as CALL_INPUTS_TABLE
from gflow.flows._provenance import TABLE as PROVENANCE_TABLE
from gflow.flows._runs import ResumeRefused, prepare_resume

_context.one_call_flow = task_flow  # Task.run (tasks sit below flows and never import them)

__all__ = ["CALL_INPUTS_TABLE", "PROVENANCE_TABLE", "Core", "Engine", "Flow", "FlowRun", "Future", "ResumeRefused",
           "RunResult", "cancel_run", "code_version", "compute_key", "compute_keys", "flow", "new_run_id",
           "prepare_resume", "task_flow"]
