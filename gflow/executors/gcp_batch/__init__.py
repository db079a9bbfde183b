"""Google Cloud Batch (``gcp-batch://PROJECT/REGION``): one Batch job per fan-out, on the shared polling
monitor, with a ``gs://`` artifact store. Guide: docs/gcp-batch.md."""

from gflow.executors.gcp_batch._executor import GcpBatchExecutor

__all__ = ["GcpBatchExecutor"]
