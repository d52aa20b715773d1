"""Shard sets for the shard tests, written with the real `datasets` package (Parquet with the
Image struct), and the checks every shard run must pass: every row once, unmasked pixels
bit-exact, other columns byte for byte, skipped and error rows keep the input's bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tests.fixtures_ray import box_mask, png, sample_image

W, H = 48, 32
BAD = b"not an image"  # a row whose image can't decode: an error row of bad input


def shard_rows(
    shard: int, n: int, bad: int | None = None, empty: int | None = None, w: int = W, h: int = H
) -> dict:
    """Columns of one shard: image and mask (bytes), a caption, a number. Row `bad` has bytes
    that are no image; row `empty` has an all-black mask (skipped)."""
    images, masks, paths = [], [], []
    for i in range(n):
        k = shard * 100 + i
        images.append(BAD if i == bad else png(sample_image(w, h, k)))
        box = (0, 0, 0, 0) if i == empty else (4 + i % 5, 6, w // 2 + i % 7, h // 2 + 3)
        masks.append(png(box_mask(w, h, box)))
        paths.append(f"img-{k}.png")
    return {
        "image": [{"bytes": b, "path": p} for b, p in zip(images, paths, strict=True)],
        "mask": [{"bytes": m, "path": None} for m in masks],
        "caption": [f"a photo, shard {shard} row {i}" for i in range(n)],
        "score": [0.5 + i for i in range(n)],
    }


def write_hf_shards(
    folder: Path, shards: int, rows: int, special: dict | None = None, **size: int
) -> list[Path]:
    """Parquet shards as `datasets` writes them (image and mask: the Image struct); `special`:
    shard number -> shard_rows' bad/empty; `size`: w, h of every image."""
    special = special or {}
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        ds = datasets.Dataset.from_dict(shard_rows(s, rows, **special.get(s, {}), **size))
        ds = ds.cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())
        path = folder / f"train-{s:05d}.parquet"
        ds.to_parquet(str(path))
        paths.append(path)
    return paths


def _raw(ds):
    """The dataset with its Image columns as stored ({bytes, path}), not decoded."""
    import datasets

    for name in ("image", "mask"):
        ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def check_parquet_output(inputs: list[Path], out: Path, statuses: dict | None = None) -> dict:
    """Each output shard against its input with `datasets`: the same features, rows, order and
    other columns; ok rows: pixels outside the mask bit-exact; skipped and error rows: the
    input's bytes. Returns the metadata rows by id."""
    import datasets

    meta = pq.read_table(out / "metadata").to_pylist()
    by_id = {r["id"]: r for r in meta}
    assert len(by_id) == len(meta)  # every row once
    for path in inputs:
        got = datasets.load_dataset("parquet", data_files=str(out / "data" / path.name),
                                    split="train")  # fmt: skip
        want = datasets.Dataset.from_parquet(str(path))
        assert got.features == want.features and len(got) == len(want)
        got, want = _raw(got), _raw(want)
        assert got["caption"] == want["caption"] and got["score"] == want["score"]
        assert got["mask"] == want["mask"]
        for i, (g, w) in enumerate(zip(got["image"], want["image"], strict=True)):
            row = by_id[f"{path.name}:{i}"]
            assert (row["shard"], row["index"]) == (path.name, i)
            if row["status"] != "error":  # an error row has no output (its input's bytes stay)
                assert row["output"] == f"data/{path.name}#{i}"
            assert g["path"] == w["path"]  # the struct's path is kept
            if row["status"] != "ok":
                assert g["bytes"] == w["bytes"], row  # skipped / error: the input's own bytes
                continue
            mask = pixels(want["mask"][i]["bytes"])[..., 0] > 0
            before, after = pixels(w["bytes"]), pixels(g["bytes"])
            assert np.array_equal(before[~mask], after[~mask])  # outside the mask: bit-exact
            assert not np.array_equal(before[mask], after[mask])  # inside: inpainted
    if statuses is not None:
        seen = {r["id"]: r["status"] for r in meta}
        assert {k: seen[k] for k in statuses} == statuses
    return by_id
