"""Pictures for report.html and side_by_side/: a result row's input, its mask as the job built it and
its output, decoded the way the job decodes them; and which rows to show (a sample drawn across
statuses, the same every time for one run)."""

from __future__ import annotations

import base64
import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from batch_inpaint.image import codec
from batch_inpaint.job.io.output_folder import output_rel
from batch_inpaint.job.io.writers import open_writer
from batch_inpaint.vocab import ErrorKind, Status

THUMB = 256
SAMPLE_ORDER = (Status.OK.value, Status.SKIPPED.value, Status.ERROR.value)
WHY_NO_PICTURE = {  # the error message beside the picture says where; this says why, briefly
    ErrorKind.NOT_FOUND.value: "it was not found",
    ErrorKind.ACCESS_DENIED.value: "access was denied",
    ErrorKind.DECODE.value: "it cannot be decoded",
    ErrorKind.URI_REJECTED.value: "its URI is not allowed",
}


def thumb(rgb: np.ndarray) -> str:
    """A JPEG data URI no larger than THUMB x THUMB: the page stays one self-contained file."""
    im = Image.fromarray(rgb)
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=78)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def input_and_mask(row: dict, storage, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The row's input and its mask as the job built it (RGB, white = inpainted)."""
    row = _with_shard_input(row, storage, cfg)
    rgb, alpha = codec.decode_image_with_alpha(_read_input(row, storage, cfg))
    return rgb, _mask(row, rgb, alpha, storage, cfg)


def row_pictures(row: dict, storage, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A finished row's input, mask and output (decoded the way the job decodes them)."""
    rgb, mask = input_and_mask(row, storage, cfg)
    out = codec.decode_image(open_writer(cfg, storage).read(output_rel(row["output"])))
    return rgb, mask, out


def error_pictures(row: dict, storage, cfg) -> tuple[list[tuple[str, str]], str | None]:
    """What can be shown of an error row: [(alt, data URI)] of its input and mask, and a note
    saying why a picture is missing (the input was not found, can't be decoded, ...)."""
    row = _with_shard_input(row, storage, cfg)
    if not row.get("image") and row.get("image_bytes") is None:
        return [], "no picture: the row names no image"
    try:
        rgb, alpha = codec.decode_image_with_alpha(_read_input(row, storage, cfg))
    except Exception as exc:  # noqa: BLE001 - the reason is the note
        why = WHY_NO_PICTURE.get(getattr(exc, "kind", "")) or _short(exc)
        return [], f"no picture of the input: {why}"
    pictures = [("input", thumb(rgb))]
    try:
        pictures.append(("mask", thumb(_mask(row, rgb, alpha, storage, cfg))))
    except Exception as exc:  # noqa: BLE001 - the input alone, and why there is no mask
        from batch_inpaint.manifest.schema import MASK_COLUMNS

        own = any(row.get(c) for c in MASK_COLUMNS)
        if not own and row.get("error_kind") not in (None, "no_mask"):  # e.g. detect failed
            return pictures, "no mask picture: the row has no mask of its own and none was made"
        return pictures, f"no mask picture: {_short(exc)}"
    if row.get("output"):  # an error row with an output (e.g. residual): kept for review
        try:
            out = open_writer(cfg, storage).read(output_rel(row["output"]))
            pictures.append(("output", thumb(codec.decode_image(out))))
        except Exception as exc:  # noqa: BLE001 - input and mask, and why there is no output
            return pictures, f"no output picture: {_short(exc)}"
    return pictures, None


def _read_input(row: dict, storage, cfg) -> bytes:
    from batch_inpaint.storage.uri import manifest_base, resolve

    if row.get("image_bytes") is not None:  # a shard row's own bytes
        return row["image_bytes"]
    return storage.read_bytes(resolve(row["image"], manifest_base(cfg.manifest)))


def _with_shard_input(row: dict, storage, cfg) -> dict:
    """A shard row (its result names `shard` and `index`) with its input's image and mask bytes,
    read from its input shard: one shard read per picture card (report_sample cards)."""
    if row.get("image") or row.get("shard") is None or row.get("index") is None:
        return row
    from batch_inpaint.job.io.shard_source import find_shards

    try:
        source = find_shards(cfg, storage)
        if source is None or row["shard"] not in source.uris:
            return row
        found = source.rows(row["shard"]).slice(int(row["index"]), 1).to_pylist()
    except Exception:  # noqa: BLE001 - the card shows why there is no picture
        return row
    got = found[0] if found else {}
    return {**row, **{k: got.get(k) for k in ("image_bytes", "mask_bytes", "image_path")}}


def _mask(row: dict, rgb: np.ndarray, alpha, storage, cfg) -> np.ndarray:
    from batch_inpaint.image.masks import finish_mask
    from batch_inpaint.job.stages.prepare import build_mask
    from batch_inpaint.manifest.schema import MASK_COLUMNS
    from batch_inpaint.storage.uri import manifest_base

    if row.get("mask_used"):  # a detected row: the job saved the mask it used
        used = codec.decode_image(open_writer(cfg, storage).read(row["mask_used"]))
        return np.where(used >= 128, 255, 0).astype(np.uint8)
    options = cfg.inpaint_options().mask
    h, w = rgb.shape[:2]
    if row.get("detections") is not None and not any(row.get(c) for c in MASK_COLUMNS):
        raw = np.zeros((h, w), bool)  # detection found nothing and the row has no mask: skipped
    else:
        raw = build_mask(row, (w, h), alpha, storage, manifest_base(cfg.manifest), options)
    hard, _ = finish_mask(raw, options)
    return np.repeat(hard[..., None], 3, axis=2)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc)  # the job's messages name URIs already redacted
    return text if len(text) <= limit else text[: limit - 1] + "…"


def full_size(row: dict, base: str | None = None) -> tuple[str | None, str | None, str | None]:
    """Where a card's pictures link to, full size: the output and a detected mask relative to the
    report (they travel with a copied output and `report --to`); the input and a given mask by
    their own location when a browser can open it (a local file, http(s)); else no link.
    `base`: the manifest's folder, which relative URIs in its rows resolve against."""
    import os

    from batch_inpaint.storage.uri import resolve, uri_scheme

    def opened(uri) -> str | None:
        if not uri:
            return None
        uri = resolve(str(uri), base)
        if uri.startswith(("http://", "https://", "file://")):
            return uri
        return None if uri_scheme(uri) else "file://" + os.path.abspath(uri)

    mask = row.get("mask_used") or None
    out = row.get("output") or None
    if out and out.startswith("data/"):  # a row inside a shard: no file of its own to open
        out = None
    return opened(row.get("image")), mask or opened(row.get("mask")), out


def shown_errors(table: pa.Table, per_kind: int,
                 in_all: int) -> tuple[pa.Table, list[tuple[str, int]], pa.Array]:  # fmt: skip
    """The error rows, their kinds with counts (most first) and the ids the Errors section lists
    (at most `per_kind` per kind, `in_all` in all)."""
    errors = table.filter(pc.equal(table.column("status"), Status.ERROR.value))
    kinds = pc.fill_null(errors.column("error_kind"), "unknown")
    counts = sorted(((k.as_py(), n.as_py()) for k, n in (
        (v["values"], v["counts"]) for v in pc.value_counts(kinds))),
        key=lambda kv: (-kv[1], kv[0]))  # fmt: skip
    picked, budget = [], in_all
    for kind, n in counts:
        take = min(n, per_kind, budget)
        budget -= take
        picked.append(pc.indices_nonzero(pc.equal(kinds, kind)).slice(0, take))
    idx = pa.concat_arrays(picked) if picked else pa.array([], pa.uint64())
    return errors, counts, errors.column("id").take(idx).combine_chunks()


def without(table: pa.Table, ids: pa.Array) -> pa.Table:
    """The table less the rows `ids` names: the sample leaves out rows the Errors section shows."""
    if not len(ids):
        return table
    return table.filter(pc.invert(pc.is_in(table.column("id"), value_set=ids)))


def sample_indices(table: pa.Table, n: int, seed: str) -> list[int]:
    """Up to `n` row positions drawn across statuses (ok, skipped, error): each status present
    gets an equal share (or all its rows, if fewer), what is left goes to the others in that
    order; within a status the draw is random but fixed by `seed` (the run id)."""
    if n <= 0 or not table.num_rows:
        return []
    status = table.column("status")
    pools = {s: pc.indices_nonzero(pc.equal(status, s)).to_numpy() for s in SAMPLE_ORDER}
    pools = {s: p for s, p in pools.items() if len(p)}
    take = {s: 0 for s in pools}
    left = n
    while left and any(take[s] < len(p) for s, p in pools.items()):
        open_ = [s for s, p in pools.items() if take[s] < len(p)]
        share = max(1, left // len(open_))
        for s in open_:
            k = min(share, len(pools[s]) - take[s], left)
            take[s] += k
            left -= k
    rng = random.Random(seed)
    out: list[int] = []
    for s, pool in pools.items():
        picks = sorted(rng.sample(range(len(pool)), take[s]))
        out += [int(pool[i]) for i in picks]
    return out
