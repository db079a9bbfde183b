"""Google Cloud Batch (``gcp-batch://PROJECT/REGION``): see docs/gcp-batch.md."""
