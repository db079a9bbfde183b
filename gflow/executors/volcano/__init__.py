"""The Volcano executor (``volcano://NAMESPACE?queue=Q``): a fan-out becomes Volcano jobs on Kubernetes.

- ``_executor``: :class:`VolcanoExecutor`; ``_runtime``: its tracker of pods and outcomes (fed by watches);
- ``_manifest``: Volcano Job manifests; ``_status``: pod states and why a pod ended; ``_k8s``: the
  Kubernetes client helpers (list-and-watch, errors).
"""

from gflow.executors.volcano._executor import VolcanoExecutor

__all__ = ["VolcanoExecutor"]
