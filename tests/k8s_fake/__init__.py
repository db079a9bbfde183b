"""A fake Kubernetes API server and a test controller playing Volcano and the kubelet (stand-ins for a real
cluster in the Volcano executor's tests; see server.py and controller.py)."""

from .controller import FakeVolcano
from .crd import job_errors
from .server import FakeKube

__all__ = ["FakeKube", "FakeVolcano", "job_errors"]
