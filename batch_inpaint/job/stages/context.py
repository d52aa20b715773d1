"""What every stage needs, built once on the driver and shipped by Ray to each task and actor."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from batch_inpaint.config import JobConfig
from batch_inpaint.params import InpaintOptions

if TYPE_CHECKING:
    from batch_inpaint.models.spec import ModelSpec


@dataclass
class JobContext:
    """Small and picklable. `spec` is the model the job plans for (native size, size multiple,
    the result rows' model columns); the model stage checks the loaded model against it."""

    config: JobConfig
    storage: Any  # batch_inpaint.storage.store.Storage
    manifest_base: str  # folder of the manifest: relative URIs in rows resolve against it
    spec: ModelSpec

    @cached_property
    def options(self) -> InpaintOptions:
        """The job's per-image options, built once per worker instead of once per row."""
        return self.config.inpaint_options()
