"""The job over WebDataset tars, written with the real `webdataset` package's TarWriter and read
back with webdataset.WebDataset: a brace pattern in, one tar per input tar out, every sample
once and in order, other members byte for byte, unmasked pixels bit-exact, skipped and error
samples with the input's own image bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

from batch_inpaint.config import JobConfig
from batch_inpaint.job.run import run_job
from tests.fixtures_ray import box_mask, png, sample_image
from tests.job.io.shard_data import BAD, pixels

W, H = 40, 30


def _write_tars(folder: Path, shards: int, rows: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(rows):
                k = s * 100 + i
                box = (0, 0, 0, 0) if (s, i) == (0, 1) else (3, 4, W // 2 + i, H // 2)
                sink.write({
                    "__key__": f"s{k:05d}",
                    "png": BAD if (s, i) == (1, 0) else png(sample_image(W, H, k)),
                    "mask.png": png(box_mask(W, H, box)),
                    "json": json.dumps({"k": k, "caption": f"photo {k}"}).encode(),
                    "txt": f"photo {k}".encode(),
                })  # fmt: skip
        paths.append(path)
    return paths


def _samples(path: Path) -> list[dict]:
    return list(wds.WebDataset(str(path), shardshuffle=False))


def test_webdataset_tars_in_and_out_through_a_brace_pattern(tmp_path):
    tars = _write_tars(tmp_path / "in", 3, 3)
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(tmp_path / "in" / "{00000..00002}.tar"), output=str(out),
                    backend="opencv", executor="local")  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"] and summary["counts"] == {"ok": 7, "error": 1, "skipped": 1}
    assert sorted(p.name for p in (out / "data").iterdir()) == [p.name for p in tars]
    meta = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    assert len(meta) == 9
    assert (
        meta["s00100"]["status"] == "error" and "shard 00001.tar row 0" in meta["s00100"]["error"]
    )
    for path in tars:
        before, after = _samples(path), _samples(out / "data" / path.name)
        assert [s["__key__"] for s in after] == [s["__key__"] for s in before]  # same order
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            row = meta[b["__key__"]]
            assert (row["shard"], row["index"]) == (path.name, i)
            assert set(a) - {"__url__", "__local_path__"} == set(b) - {"__url__", "__local_path__"}
            for member in ("mask.png", "json", "txt"):
                assert a[member] == b[member]  # byte for byte
            if row["status"] != "ok":
                assert a["png"] == b["png"]  # the input's own bytes
                continue
            assert row["output"] == f"data/{path.name}#{i}"
            mask = pixels(b["mask.png"])[..., 0] > 0
            old, new = pixels(b["png"]), pixels(a["png"])
            assert np.array_equal(old[~mask], new[~mask])  # outside the mask: bit-exact
            assert not np.array_equal(old[mask], new[mask])
