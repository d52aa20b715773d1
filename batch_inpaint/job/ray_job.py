"""Kept for imports from before the executors: run_job lives in job/run.py, the Ray Data graph in
job/executors/ray_data.py."""

from batch_inpaint.job.run import run_job

__all__ = ["run_job"]
