"""Stage 2 (a pool of GPU or CPU actors): one model per actor; each batch's regions are grouped by
working size and shared parameters, so one forward pass serves many rows with per-region seeds.

Reads MODEL_INPUT, writes MODELLED: the crops are dropped, each pending row gets its per-region
results, or becomes an error row when the model fails on it (alone, after splitting its batch).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from batch_inpaint.errors import InpaintError
from batch_inpaint.image.inpaint import region_seed
from batch_inpaint.job.stages.attempts import Attempts, counted, given_up
from batch_inpaint.job.stages.context import JobContext
from batch_inpaint.job.stages.timing import StageClock
from batch_inpaint.job.stages.workitem import (
    CROP_MASKS,
    CROPS,
    ERROR,
    ERROR_KIND,
    MODEL_INPUT,
    MODELLED,
    PARAMS,
    REGIONS,
    RESULTS,
    SEED,
    STATUS,
    T_MODEL,
    ModelOutcome,
    map_rows,
    params_from,
    pixels_from,
    replace_columns,
    row_error,
)
from batch_inpaint.models.base import Inpainter
from batch_inpaint.models.memory import pass_memory_gb
from batch_inpaint.vocab import ErrorKind, Status

InpainterFactory = Callable[[JobContext], Inpainter]  # picklable: Ray ships it to each actor
_WRITTEN = pa.schema([MODELLED.schema.field(n) for n in (STATUS, ERROR_KIND, ERROR, RESULTS)])


class ModelStage:
    """`inpainter` (in process) or `inpainter_factory(ctx)` (built in each actor) replaces the
    model the config names, e.g. for a test; either must match `ctx.spec`."""

    def __init__(
        self,
        ctx: JobContext,
        inpainter: Inpainter | None = None,
        inpainter_factory: InpainterFactory | None = None,
    ):
        from batch_inpaint.models.spec import check_spec

        self.ctx = ctx
        if inpainter is None:
            inpainter = (inpainter_factory or load_model)(ctx)
        check_spec(ctx.spec, inpainter.spec)
        self.inpainter = inpainter
        self.on_gpu = str(getattr(inpainter, "device", "cpu")).startswith("cuda")
        out = ctx.config.output
        self.attempts = Attempts(ctx.storage, out) if out and ctx.storage else None

    def __call__(self, table: pa.Table) -> pa.Table:
        MODEL_INPUT.check(table)
        status = table.column(STATUS).to_pylist()
        pending = [i for i, s in enumerate(status) if s == Status.PENDING.value]
        clock = StageClock(T_MODEL, table.num_rows, idle=0.0)  # skipped and error rows: 0.0
        with clock.share(pending):
            ids = table.column("id").to_pylist()
            outcome = self._counted(table, pending, ids) if pending else ModelOutcome()

        def one(i: int, row: dict) -> dict:
            exc = outcome.failures.get(i)
            if exc is not None:
                kind, error = row_error(row["id"], exc)
                return {STATUS: Status.ERROR.value, ERROR_KIND: kind, ERROR: error}
            return {**row, RESULTS: outcome.results.get(i)}

        columns = map_rows(table, one, _WRITTEN, reads=("id", STATUS, ERROR_KIND, ERROR))
        columns[T_MODEL] = clock.array()
        return MODELLED.check(replace_columns(table.drop_columns([CROPS, CROP_MASKS]), columns))

    def _counted(self, table: pa.Table, pending: list[int], ids: list) -> ModelOutcome:
        """_run with its starts recorded (job/stages/attempts.py): a batch whose worker died
        BATCH_TRIES times runs row by row, and a row that killed it ROW_TRIES times alone
        becomes an out_of_memory error row without running the model again."""
        outcome = ModelOutcome()

        def run(rows: list[int]) -> None:
            one = self._run(table, rows)
            outcome.failures.update(one.failures)
            outcome.results.update(one.results)

        def given(k: int) -> None:
            outcome.failures[pending[k]] = given_up(str(ids[pending[k]]))

        counted(self.attempts, [str(ids[i]) for i in pending], lambda: run(pending),
                lambda k: run([pending[k]]), given)  # fmt: skip
        return outcome

    def _run(self, table: pa.Table, pending: list[int]) -> ModelOutcome:
        crops = table.column(CROPS).to_pylist()
        crop_masks = table.column(CROP_MASKS).to_pylist()
        regions = table.column(REGIONS).to_pylist()
        seeds = table.column(SEED).to_pylist()
        params = {i: params_from(table.column(PARAMS)[i].as_py()) for i in pending}
        # One piece per (row, region); pieces of one working size and parameters share a pass.
        groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        for i in pending:
            for j, reg in enumerate(regions[i]):
                groups[(reg["work_w"], reg["work_h"], params[i].batch_key())].append((i, j))
        done: dict[int, list] = {i: [None] * len(regions[i]) for i in pending}
        out = ModelOutcome()
        for (w, h, _), pieces in groups.items():
            bs = self.ctx.config.batch_size or batch_size_for(w, h, self.on_gpu)
            for k in range(0, len(pieces), bs):
                chunk = [p for p in pieces[k : k + bs] if p[0] not in out.failures]
                if not chunk:
                    continue
                results = self.inpainter.inpaint_isolated(
                    [pixels_from(crops[i][j], h, w, 3) for i, j in chunk],
                    [pixels_from(crop_masks[i][j], h, w) for i, j in chunk],
                    params[chunk[0][0]],
                    [params[i].prompt for i, _ in chunk],
                    [params[i].negative_prompt for i, _ in chunk],
                    [region_seed(seeds[i], j) for i, j in chunk],
                )
                for (i, j), res in zip(chunk, results, strict=True):
                    if isinstance(res, BaseException):
                        out.failures[i] = res
                    else:
                        done[i][j] = np.ascontiguousarray(res[0], dtype=np.uint8).tobytes()
        out.results = {i: r for i, r in done.items() if i not in out.failures}
        return out


def check_memory(regions, ctx: JobContext) -> None:
    """The prepare stage's guard: InpaintError (too_large) naming the working size when a model
    pass at it is estimated (models/memory.py) to need more than max_model_memory_gb."""
    limit = ctx.config.max_model_memory_gb
    if limit is None:
        return
    cfg = ctx.config
    on_gpu = cfg.device.startswith("cuda")
    fp32 = cfg.dtype == "fp32" or (cfg.dtype == "auto" and not on_gpu)
    for w, h in sorted({r.work_size for r in regions}):
        batch = cfg.batch_size or batch_size_for(w, h, on_gpu)
        need = pass_memory_gb(ctx.spec.backend, w, h, batch, 4 if fp32 else 2)
        if need is not None and need > limit:
            raise InpaintError(
                f"working size {w}x{h} needs about {need:.1f} GB for a model pass (estimate for "
                f"backend {ctx.spec.backend}, batch {batch}, {'fp32' if fp32 else 'fp16'}), more "
                f"than max_model_memory_gb {limit:g}: lower max_side or crop_size, use crop mode, "
                "or raise max_model_memory_gb",
                kind=ErrorKind.TOO_LARGE.value,
            )


def load_model(ctx: JobContext) -> Inpainter:
    """The model the job's config names, on the device the driver chose."""
    from batch_inpaint.models import load_inpainter

    cfg = ctx.config
    return load_inpainter(
        cfg.backend,
        cfg.model,
        revision=cfg.revision,
        device=cfg.device,
        dtype=None if cfg.dtype == "auto" else cfg.dtype,
        attention=cfg.attention,
        vae_tiling=cfg.vae_tiling,
        compile=cfg.torch_compile,
        storage=ctx.storage,
        vae=cfg.vae,
    )


def batch_size_for(work_w: int, work_h: int, on_gpu: bool) -> int:
    """Images per forward pass by working size: batching pays on GPUs at small sizes; on CPU it
    only costs memory. Measured figures behind these numbers are in bench/ and the README."""
    if not on_gpu:
        return 1
    pixels = work_w * work_h
    if pixels <= 512 * 512:
        return 8
    if pixels <= 768 * 768:
        return 4
    if pixels <= 1024 * 1024:
        return 2
    return 1
