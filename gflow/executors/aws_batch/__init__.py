"""The AWS Batch executor (``aws-batch://QUEUE?region=R``): a fan-out becomes array jobs.

- ``_executor``: :class:`AwsBatchExecutor` (submit, cancel, images, job definitions);
- ``_monitor``: its handler of the shared polling monitor (:mod:`gflow.executors.polling`);
- ``_jobs``, ``_options``, ``_checks``, ``_images``, ``_logs``: requests, URL/profile options, setup checks,
  image build/push, CloudWatch logs. The AWS clients are :mod:`gflow.clouds.aws` (shared with the S3 store).
"""

from gflow.executors.aws_batch._executor import AwsBatchExecutor

__all__ = ["AwsBatchExecutor"]
