"""Builders for the fast job tests: a local manifest folder, a job context, injected models."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from batch_inpaint.config import JobConfig
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.models.spec import model_spec
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import manifest_table


class FailingOn(OpenCVInpainter):
    """OpenCV, except that an image whose prompt is `bad_prompt` makes the whole call fail (as a
    model error on one input would), so the stage's isolation is what saves the others."""

    def __init__(self, bad_prompt: str = "fail here"):
        super().__init__()
        self.bad_prompt = bad_prompt
        self.calls = 0

    def inpaint(self, images, masks, params, prompts, negative_prompts, seeds):
        self.calls += 1
        if self.bad_prompt in prompts:
            raise RuntimeError(f"model blew up on a batch of {len(images)}")
        return super().inpaint(images, masks, params, prompts, negative_prompts, seeds)


def context(root: Path, **settings) -> JobContext:
    settings = {"manifest": str(root / "manifest.parquet"), "output": str(root / "out"),
                "backend": "opencv", **settings}  # fmt: skip
    cfg = JobConfig(**settings)
    storage = Storage(cfg.storage_options())
    return JobContext(cfg, storage, manifest_base=str(root), spec=model_spec("opencv"))


def table_of(rows: list[dict]) -> pa.Table:
    return manifest_table(rows)
