"""batch-inpaint: distributed batch image inpainting with Stable Diffusion inpainting models.

Public API: `Manifest` (build, check, read and write manifests), `JobConfig`, `run_job` (the
job, in process or on Ray: `executor`) and `plan_job` (its dry run), `inpaint_array` and `load_inpainter` (one image in process),
`batch_inpaint.compat.pipeline` (the ModelScope-style pipeline). Importing this package imports neither torch nor ray.
"""

__version__ = "0.1.0"

from batch_inpaint.config import JobConfig as JobConfig  # noqa: E402
from batch_inpaint.manifest.manifest import Manifest as Manifest  # noqa: E402


def run_job(config: JobConfig, **kwargs):
    """Run the job described by `config` (in process or on Ray: its `executor`); returns the run
    summary (also in run.json)."""
    from batch_inpaint.job.run import run_job as _run_job

    return _run_job(config, **kwargs)


def plan_job(config: JobConfig, **kwargs) -> dict:
    """What `run_job(config)` would do and cost (the dry run): starts no Ray, writes nothing; see
    batch_inpaint.job.driver.estimate.plan_job."""
    from batch_inpaint.job.driver.estimate import plan_job as _plan_job

    return _plan_job(config, **kwargs)


def inpaint_array(*args, **kwargs):
    """Inpaint one RGB array in process; see batch_inpaint.image.inpaint.inpaint_array."""
    from batch_inpaint.image.inpaint import inpaint_array as _inpaint_array

    return _inpaint_array(*args, **kwargs)


def load_inpainter(*args, **kwargs):
    """Load a model backend; see batch_inpaint.models.load_inpainter."""
    from batch_inpaint.models import load_inpainter as _load_inpainter

    return _load_inpainter(*args, **kwargs)


__all__ = [
    "JobConfig", "Manifest", "inpaint_array", "load_inpainter", "plan_job", "run_job", "__version__",
]  # fmt: skip
