"""Cloud clients shared by more than one part of gflow (an executor and an artifact store), kept apart
from both so neither imports the other: :mod:`gflow.clouds.aws` (boto3 sessions, clients, retries with
backoff, error translation) serves ``executors.aws_batch`` and ``artifacts.s3``; :mod:`gflow.clouds.gcp`
(credentials, backoff on 429, request counting, Google API error translation) serves
``executors.gcp_batch`` and ``artifacts.gcs``."""
