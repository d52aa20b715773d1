"""Stage 2 (a pool of GPU or CPU actors): one model per actor; each batch's regions are grouped by
working size and shared parameters, so one forward pass serves many rows with per-region seeds.

Reads MODEL_INPUT, writes MODELLED: the crops are dropped, each pending row gets its per-region
results, or becomes an error row when the model fails on it (alone, after splitting its batch).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from batch_inpaint.config import batch_size_for
from batch_inpaint.image.inpaint import region_seed
from batch_inpaint.job.context import JobContext
from batch_inpaint.job.workitem import (
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
    params_from,
    pixels_from,
    replace_columns,
    row_error,
)
from batch_inpaint.models.base import Inpainter
from batch_inpaint.vocab import Status

InpainterFactory = Callable[[JobContext], Inpainter]  # picklable: Ray ships it to each actor


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

    def __call__(self, table: pa.Table) -> pa.Table:
        MODEL_INPUT.check(table)
        t0 = time.perf_counter()
        status = table.column(STATUS).to_pylist()
        pending = [i for i, s in enumerate(status) if s == Status.PENDING.value]
        outcome = self._run(table, pending) if pending else ModelOutcome()
        share = (time.perf_counter() - t0) / max(1, len(pending))
        kinds = table.column(ERROR_KIND).to_pylist()
        errors = table.column(ERROR).to_pylist()
        ids = table.column("id").to_pylist()
        for i, exc in outcome.failures.items():
            status[i] = Status.ERROR.value
            kinds[i], errors[i] = row_error(ids[i], exc)
        rows = range(table.num_rows)
        in_model = set(pending)
        types = MODELLED.schema
        values = {
            STATUS: status,
            ERROR_KIND: kinds,
            ERROR: errors,
            RESULTS: [outcome.results.get(i) for i in rows],
            T_MODEL: [share if i in in_model else 0.0 for i in rows],
        }
        columns = {name: pa.array(v, types.field(name).type) for name, v in values.items()}
        return MODELLED.check(replace_columns(table.drop_columns([CROPS, CROP_MASKS]), columns))

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
    )
