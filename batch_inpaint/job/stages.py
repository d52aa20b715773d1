"""The job's three stages as plain functions over Arrow tables, with no Ray in sight:

1. `prepare_batch` (CPU): fetch bytes, decode, build the mask, plan regions, cut them out.
2. `ModelStage` (GPU or CPU actor): group regions by working size and parameters, run the model.
3. `finish_batch` (CPU): paste back, encode, write the image, build the result row.

Each stage takes a table and returns a table; a row that fails anywhere becomes an error row and
travels on, so every manifest row reaches the metadata. Internal columns start with `_bi_` and are
dropped before results are written; every other manifest column is passed through untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from batch_inpaint.config import JobConfig, batch_size_for
from batch_inpaint.errors import InpaintError, MaskError, error_kind
from batch_inpaint.image import codec, geometry, masks
from batch_inpaint.image.inpaint import prepare, region_seed
from batch_inpaint.manifest.schema import RESULT_SCHEMA
from batch_inpaint.params import GenerationParams, InpaintOptions, derive_seed
from batch_inpaint.storage.uri import join, output_key, redact_uri, resolve

P = "_bi_"  # prefix of internal columns
OVERRIDES = {  # manifest column -> GenerationParams field
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "strength": "strength",
}


@dataclass
class JobContext:
    """What every stage needs; small and picklable (Ray ships it to each task and actor)."""

    config: JobConfig
    storage: Any  # batch_inpaint.storage.store.Storage
    manifest_base: str  # folder of the manifest: relative URIs in rows resolve against it
    native_size: int | None = 512
    size_multiple: int = 8
    model_info: dict = field(default_factory=dict)

    @cached_property
    def options(self) -> InpaintOptions:
        """The job's options, built once per worker instead of once per row and use."""
        return self.config.inpaint_options()


# ---------------------------------------------------------------------------------------------
# 1. prepare
def prepare_batch(table: pa.Table, ctx: JobContext) -> pa.Table:
    rows = table.to_pylist()
    out: dict[str, list] = defaultdict(list)
    for row in rows:
        t0 = time.perf_counter()
        try:
            item = _prepare_row(row, ctx)
        except Exception as exc:  # noqa: BLE001 - a bad row becomes data, never a crash
            item = _error_item(row, exc)
        item[f"{P}t_prepare"] = time.perf_counter() - t0
        for k in PREPARED_FIELDS:
            out[k].append(item.get(k))
    return _append(table, out, PREPARED_TYPES)


PREPARED_TYPES = {
    f"{P}status": pa.string(),
    f"{P}error_kind": pa.string(),
    f"{P}error": pa.string(),
    f"{P}width": pa.int32(),
    f"{P}height": pa.int32(),
    f"{P}pixels": pa.large_binary(),
    f"{P}soft": pa.large_binary(),
    f"{P}regions": pa.string(),
    f"{P}crops": pa.list_(pa.large_binary()),
    f"{P}crop_masks": pa.list_(pa.large_binary()),
    f"{P}seed": pa.int64(),
    f"{P}params": pa.string(),
    f"{P}exif": pa.binary(),
    f"{P}t_prepare": pa.float64(),
}
PREPARED_FIELDS = list(PREPARED_TYPES)


def _error_item(row: dict, exc: BaseException) -> dict:
    rid = row.get("id")
    msg = str(exc) if isinstance(exc, InpaintError) else f"{type(exc).__name__}: {exc}"
    return {
        f"{P}status": "error",
        f"{P}error_kind": error_kind(exc),
        f"{P}error": f"row {rid!r}: {msg}",
    }


def row_params(row: dict, base: GenerationParams) -> GenerationParams:
    return base.with_overrides(**{f: row.get(col) for col, f in OVERRIDES.items()})


def row_seed(row: dict, cfg: JobConfig) -> int:
    if row.get("seed") is not None:
        return int(row["seed"])
    rid = str(row["id"])
    return derive_seed(rid if cfg.seed is None else f"{cfg.seed}/{rid}")


def _prepare_row(row: dict, ctx: JobContext) -> dict:
    cfg = ctx.config
    rid = row.get("id")
    if rid is None or str(rid) == "":
        raise MaskError("row has no id")
    if not row.get("image"):
        raise MaskError("row has no image URI")
    opts = ctx.options
    params = row_params(
        row, opts.generation
    )  # bad per-row values (e.g. steps=0) fail this row only
    image_uri = resolve(str(row["image"]), ctx.manifest_base)
    data = ctx.storage.read_bytes(image_uri)
    try:
        rgb, alpha = codec.decode_image_with_alpha(data, max_pixels=cfg.max_pixels)
    except InpaintError as exc:
        raise type(exc)(f"image {redact_uri(image_uri)}: {exc}", kind=exc.kind) from None
    h, w = rgb.shape[:2]
    raw = build_mask(row, (w, h), alpha, ctx)
    prep = prepare(rgb, raw, opts, native_size=ctx.native_size, size_multiple=ctx.size_multiple)
    item: dict[str, Any] = {
        f"{P}width": w,
        f"{P}height": h,
        f"{P}pixels": rgb.tobytes(),
        f"{P}seed": row_seed(row, cfg),
        f"{P}params": json.dumps(params.to_dict(), sort_keys=True),
    }
    if cfg.keep_exif:
        item[f"{P}exif"] = _exif_bytes(data)
    if not prep.regions:
        item[f"{P}status"] = "skipped"
        return item
    soft, regions = prep.soft, prep.regions
    crops = [np.ascontiguousarray(c).tobytes() for c in prep.crops]
    crop_masks = [np.ascontiguousarray(m).tobytes() for m in prep.crop_masks]
    item.update(
        {
            f"{P}status": "pending",
            f"{P}soft": _soft_bytes(soft),
            f"{P}regions": json.dumps([[*r.box, *r.work_size] for r in regions]),
            f"{P}crops": crops,
            f"{P}crop_masks": crop_masks,
        }
    )
    return item


def build_mask(row: dict, size: tuple[int, int], alpha, ctx: JobContext) -> np.ndarray:
    """The union of every mask source the row gives; a row with none is an error."""
    opts = ctx.options.mask
    parts = []
    if row.get("mask"):
        mask_uri = resolve(str(row["mask"]), ctx.manifest_base)
        data = ctx.storage.read_bytes(mask_uri)
        try:
            parts.append(masks.mask_from_image(data, size=size, options=opts))
        except InpaintError as exc:
            raise type(exc)(f"mask {redact_uri(mask_uri)}: {exc}", kind=exc.kind) from None
    if row.get("mask_boxes"):
        parts.append(masks.mask_from_boxes(row["mask_boxes"], size))
    if row.get("mask_polygons"):
        parts.append(masks.mask_from_polygons(row["mask_polygons"], size))
    if row.get("mask_from_alpha"):
        if alpha is None:
            raise MaskError("mask_from_alpha is set but the image has no alpha channel")
        parts.append(masks.mask_from_alpha(alpha, opts))
    if not parts:
        raise MaskError("row has no mask: give mask, mask_boxes, mask_polygons or mask_from_alpha")
    out = parts[0]
    for p in parts[1:]:
        out = out | p
    return out


def _soft_bytes(soft: np.ndarray) -> bytes:
    # Quantised to uint8; 0 stays exactly 0, so untouched pixels stay bit-for-bit.
    return np.round(np.clip(soft, 0.0, 1.0) * 255).astype(np.uint8).tobytes()


def _exif_bytes(data: bytes) -> bytes | None:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.info.get("exif")


# ---------------------------------------------------------------------------------------------
# 2. model
class ModelStage:
    """Holds one model per actor; every batch is split into groups that can share a forward pass."""

    def __init__(self, ctx: JobContext, inpainter=None):
        from batch_inpaint.models import load_inpainter

        self.ctx = ctx
        cfg = ctx.config
        self.inpainter = inpainter or load_inpainter(
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
        self.on_gpu = str(getattr(self.inpainter, "device", "cpu")).startswith("cuda")

    def __call__(self, table: pa.Table) -> pa.Table:
        _test_crash_hook()
        t0 = time.perf_counter()
        status = table.column(f"{P}status").to_pylist()
        errors = table.column(f"{P}error").to_pylist()
        kinds = table.column(f"{P}error_kind").to_pylist()
        results: list[list[bytes] | None] = [None] * table.num_rows
        pending = [i for i, s in enumerate(status) if s == "pending"]
        if pending:
            self._run(table, pending, results, status, errors, kinds)
        elapsed = time.perf_counter() - t0
        share = elapsed / max(1, len(pending))
        table = table.drop_columns([f"{P}crops", f"{P}crop_masks"])
        cols = {
            f"{P}status": pa.array(status, pa.string()),
            f"{P}error": pa.array(errors, pa.string()),
            f"{P}error_kind": pa.array(kinds, pa.string()),
        }
        for name, arr in cols.items():
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        table = table.append_column(f"{P}results", pa.array(results, pa.list_(pa.large_binary())))
        in_model = set(pending)
        t_model = [share if i in in_model else 0.0 for i in range(table.num_rows)]
        return table.append_column(f"{P}t_model", pa.array(t_model, pa.float64()))

    def _run(self, table, pending, results, status, errors, kinds) -> None:
        crops = table.column(f"{P}crops").to_pylist()
        crop_masks = table.column(f"{P}crop_masks").to_pylist()
        regions = table.column(f"{P}regions").to_pylist()
        params = table.column(f"{P}params").to_pylist()
        seeds = table.column(f"{P}seed").to_pylist()
        # One piece per (row, region); pieces of one working size and parameters share a pass.
        groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        row_params: dict[int, GenerationParams] = {}
        for i in pending:
            row_params[i] = GenerationParams(**json.loads(params[i]))
            for j, reg in enumerate(json.loads(regions[i])):
                groups[(reg[4], reg[5], row_params[i].batch_key())].append((i, j))
        done: dict[int, list] = {i: [None] * len(json.loads(regions[i])) for i in pending}
        failed: dict[int, str] = {}
        for (w, h, _), pieces in groups.items():
            bs = self.ctx.config.batch_size or batch_size_for(w, h, self.on_gpu)
            for k in range(0, len(pieces), bs):
                chunk = [p for p in pieces[k : k + bs] if p[0] not in failed]
                if not chunk:
                    continue
                imgs = [_frombuf(crops[i][j], h, w, 3) for i, j in chunk]
                msks = [_frombuf(crop_masks[i][j], h, w) for i, j in chunk]
                p0 = row_params[chunk[0][0]]
                outs = self.inpainter.inpaint_isolated(
                    imgs,
                    msks,
                    p0,
                    [row_params[i].prompt for i, _ in chunk],
                    [row_params[i].negative_prompt for i, _ in chunk],
                    [region_seed(seeds[i], j) for i, j in chunk],
                )
                for (i, j), res in zip(chunk, outs, strict=True):
                    if isinstance(res, Exception):
                        failed[i] = str(res)
                    else:
                        done[i][j] = np.ascontiguousarray(res[0], dtype=np.uint8).tobytes()
        for i in pending:
            if i in failed:
                status[i], kinds[i] = "error", "model"
                errors[i] = f"row {table.column('id')[i].as_py()!r}: {failed[i]}"
            else:
                results[i] = done[i]


CRASH_MARKER_ENV = "BATCH_INPAINT_TEST_CRASH_MARKER"


def _test_crash_hook() -> None:
    """TEST-ONLY fault injection, never set in production: when the variable names a path that
    does not exist yet, create it and kill this actor's process at once, as a GPU fault or an
    OOM kill would. tests/test_job_faults.py uses it to check that Ray restarts the actor, retries
    the batch and the job still records every row once. O_EXCL: only one actor ever crashes."""
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def _frombuf(buf: bytes, h: int, w: int, c: int | None = None) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return np.frombuffer(buf, dtype=np.uint8).reshape(shape)


# ---------------------------------------------------------------------------------------------
# 3. finish
def finish_batch(table: pa.Table, ctx: JobContext) -> pa.Table:
    cfg = ctx.config
    cols = {
        name: table.column(name).to_pylist() for name in table.column_names if name.startswith(P)
    }
    ids = table.column("id").to_pylist()
    out: dict[str, list] = defaultdict(list)
    for i, rid in enumerate(ids):
        t0 = time.perf_counter()
        status, kind, err = cols[f"{P}status"][i], cols[f"{P}error_kind"][i], cols[f"{P}error"][i]
        uri = sha = None
        if status in ("pending", "skipped"):
            try:
                data = _finish_row({k: v[i] for k, v in cols.items()}, cfg)
                uri = output_uri(cfg, rid)
                ctx.storage.write_bytes(uri, data)
                sha = hashlib.sha256(data).hexdigest()
                status = "ok" if status == "pending" else "skipped"
            except Exception as exc:  # noqa: BLE001 - one row's failure stays in its row
                item = _error_item({"id": rid}, exc)
                status, kind, err = "error", item[f"{P}error_kind"], item[f"{P}error"]
                uri = sha = None
        out["status"].append(status)
        out["error_kind"].append(kind)
        out["error"].append(err)
        out["output"].append(uri)
        out["sha256"].append(sha)
        out["width"].append(cols[f"{P}width"][i])
        out["height"].append(cols[f"{P}height"][i])
        out["seed"].append(cols[f"{P}seed"][i])
        out["params"].append(cols[f"{P}params"][i])
        out["prepare_s"].append(cols[f"{P}t_prepare"][i])
        out["model_s"].append(cols[f"{P}t_model"][i])
        out["write_s"].append(time.perf_counter() - t0)
        out["finished_at"].append(dt.datetime.now(dt.timezone.utc))
    for k, v in ctx.model_info.items():
        out[k] = [v] * len(ids)
    keep = [c for c in table.column_names if not c.startswith(P)]
    result = table.select(keep)
    for name in out:
        if name in result.column_names:  # a manifest column named like a result column
            result = result.drop_columns([name])
    return _append(result, out, RESULT_TYPES)


# Result columns and their types come from the one schema in schema.py.
RESULT_TYPES = {f.name: f.type for f in RESULT_SCHEMA if f.name != "id"}


def output_uri(cfg: JobConfig, row_id: str) -> str:
    return join(cfg.output, "images", output_key(str(row_id), "." + cfg.extension))


def _finish_row(c: dict, cfg: JobConfig) -> bytes:
    w, h = c[f"{P}width"], c[f"{P}height"]
    original = _frombuf(c[f"{P}pixels"], h, w, 3)
    if c[f"{P}status"] == "skipped":
        image = original
    else:
        soft = _frombuf(c[f"{P}soft"], h, w).astype(np.float32) / 255.0
        pieces = []
        for reg, res in zip(json.loads(c[f"{P}regions"]), c[f"{P}results"], strict=True):
            region = geometry.Region(box=tuple(reg[:4]), work_size=(reg[4], reg[5]))
            pieces.append((region, _frombuf(res, reg[5], reg[4], 3)))
        image = geometry.paste(original, soft, pieces)
    data = codec.encode_image(
        image,
        cfg.output_format,
        quality=cfg.jpeg_quality,
        png_compress_level=cfg.png_compress_level,
        exif=c.get(f"{P}exif") if cfg.keep_exif else None,
    )
    # Checked here, once, so finalize need not read every output back: what is written decodes.
    check = codec.open_image(data, max_pixels=max(cfg.max_pixels, w * h))
    if check.size != (w, h):
        raise InpaintError(f"encoded output is {check.size}, expected {(w, h)}", kind="encode")
    return data


def _append(table: pa.Table, cols: dict[str, list], types: dict[str, pa.DataType]) -> pa.Table:
    for name, typ in types.items():
        if name in cols:
            table = table.append_column(name, pa.array(cols[name], typ))
    return table
