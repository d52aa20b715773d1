"""prepare -> model -> finish in one process: the job's graph when the model runs on the CPU.

Split into three Ray stages, every row's decoded image, soft mask, crops and results went through
the object store twice (about 1.1 MB a row at 512², against ~50 KB of JPEG read), and a CPU model
actor sat on one core while the prepare and finish tasks took the others. On the CPU nothing is
gained by separating them: one pool of CPU actors, each running the three stages on its own
blocks, uses every core and passes only manifest rows in and result rows out. A GPU job keeps
them apart (job/run.py), so that CPU tasks beside the GPU actor keep it fed.
"""

from __future__ import annotations

import pyarrow as pa

from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import InpainterFactory, ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch


class FusedStage:
    """A Ray Data callable class: manifest rows in, FINISHED result rows out, one model per
    actor. The model stage inside keeps its attempts bookkeeping (job/stages/attempts.py), so a block
    whose actor died runs row by row as in the split graph."""

    def __init__(self, ctx: JobContext, inpainter_factory: InpainterFactory | None = None):
        _limit_threads(ctx.config.cpus_per_actor or 1.0)  # unset outside a resolved run
        keep_freed_memory()
        self.ctx = ctx
        self.model = ModelStage(ctx, inpainter_factory=inpainter_factory)

    def __call__(self, table: pa.Table) -> pa.Table:
        return finish_batch(self.model(prepare_batch(table, self.ctx)), self.ctx)


def _limit_threads(cpus: float) -> None:
    """OpenCV's own thread pool spans every core of the node: with one actor per core they
    would fight; one actor uses the CPUs Ray gave it (torch follows OMP_NUM_THREADS, Ray's)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a core dependency
        return
    cv2.setNumThreads(max(1, int(cpus)))


_KEPT: list[bool] = []


def keep_freed_memory() -> None:
    """Keep freed image buffers in this process for the next rows (glibc; elsewhere a no-op).

    By default glibc hands a freed block over 128 KB back to the kernel at once, or trims the
    heap past 2x that, so every row's pixels, crops and their copies land on fresh pages: at
    512² about 1,100 page faults and 3 ms of system time a row in prepare alone, 15-20% of a
    row's CPU next to the lean loop (docs/benchmarks.md, c2). Blocks up to 32 MB now come from
    the heap, and up to 256 MB of freed heap stays mapped: the process keeps about its peak
    working set of a few batches, which it would fault back in anyway."""
    if _KEPT:
        return
    _KEPT.append(True)
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # not glibc-like (macOS): nothing to set
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)
