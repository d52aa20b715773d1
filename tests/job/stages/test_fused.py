"""The job's two graphs: fused (CPU models: prepare, model and finish in one actor pool, only rows
between stages) and split (CPU tasks beside the model actors, for GPUs). Both write the same
pixels and rows; the soft mask travels per region box in the split one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver.resources import pool
from batch_inpaint.job.run import run_job
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from tests.fixtures_ray import manifest_bytes, png, sample_image
from tests.job.helpers import context, table_of

W, H = 320, 240


def _rows(root: Path) -> list[dict]:
    """Two far-apart marks per image (crop mode: two region boxes), one row without a mask
    (an error row), one whose image is missing (an error row) and one with an empty mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(5):
        rid = f"r{i}"
        (root / "images" / f"{rid}.png").write_bytes(png(sample_image(W, H, i)))
        m = np.zeros((H, W), np.uint8)
        m[20 + i : 40 + i, 30:50] = 255
        m[180:200, 250 - i : 280 - i] = 255
        (root / "masks" / f"{rid}.png").write_bytes(png(m))
        rows.append({"id": rid, "image": f"images/{rid}.png", "mask": f"masks/{rid}.png"})
    (root / "masks" / "empty.png").write_bytes(png(np.zeros((H, W), np.uint8)))
    rows += [
        {"id": "no-mask", "image": "images/r0.png"},
        {"id": "no-image", "image": "images/gone.png", "mask": "masks/r0.png"},
        {"id": "empty-mask", "image": "images/r1.png", "mask": "masks/empty.png"},
    ]
    (root / "manifest.parquet").write_bytes(manifest_bytes(rows))
    return rows


SETTINGS = {"backend": "opencv", "mode": "crop", "crop_size": 64, "feather": 4}


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    rows = _rows(root)
    out = {}
    for fuse in (True, False):
        cfg = JobConfig(manifest=str(root / "manifest.parquet"), output=str(root / f"out-{fuse}"),
                        fuse_stages=fuse, **SETTINGS)  # fmt: skip
        summary = run_job(cfg, echo=lambda *_: None)
        meta = {r["id"]: r for r in pq.read_table(Path(cfg.output) / "metadata").to_pylist()}
        out[fuse] = (summary, meta, Path(cfg.output))
    return root, rows, out


def test_fused_and_split_write_the_same_rows_and_pixels(runs):
    root, rows, out = runs
    (s_fused, fused, out_fused), (s_split, split, out_split) = out[True], out[False]
    assert s_fused["counts"] == s_split["counts"]
    assert set(fused) == set(split) == {r["id"] for r in rows}
    for rid, row in fused.items():
        other = split[rid]
        for key in ("status", "error_kind", "output", "sha256", "width", "height", "seed"):
            assert row[key] == other[key], (rid, key)
    assert {rid for rid, r in fused.items() if r["status"] == "error"} == {"no-mask", "no-image"}
    assert fused["empty-mask"]["status"] == "skipped"
    for rid, row in fused.items():
        if row["output"]:
            data = (out_fused / row["output"]).read_bytes()
            assert data == (out_split / row["output"]).read_bytes(), rid
            assert hashlib.sha256(data).hexdigest() == row["sha256"]


def test_job_pixels_match_the_stages_run_in_process(runs):
    """The same stage functions in this process (what bench c2's plain loop runs) give the
    job's bytes: the soft mask cut to region boxes pastes exactly as the full-frame one."""
    root, rows, out = runs
    _, fused, out_fused = out[True]
    ctx = context(root, output=str(root / "in-process"), **SETTINGS)
    good = [r for r in rows if r["id"].startswith("r")]
    finished = finish_batch(ModelStage(ctx)(prepare_batch(table_of(good), ctx)), ctx)
    by_id = dict(zip(finished.column("id").to_pylist(), finished.to_pylist(), strict=True))
    for rid, row in by_id.items():
        assert row["status"] == "ok", row["error"]
        assert row["sha256"] == fused[rid]["sha256"], rid
        original = np.asarray(sample_image(W, H, int(rid[1:])))
        from PIL import Image

        got = np.asarray(Image.open(out_fused / row["output"]).convert("RGB"))
        changed = np.any(got != original, axis=-1)
        assert changed.any() and not changed[100:160, 100:200].any(), rid  # between the marks


def test_pool_fuses_cpu_models_and_sizes_the_pool_for_the_cores():
    base = {"manifest": "m.parquet", "output": "out", "backend": "opencv"}
    cfg = pool(JobConfig(**base), gpus=0.0, cluster_cpus=8)
    assert (cfg.fuse_stages, cfg.max_actors) == (True, 8)
    cfg = pool(JobConfig(**base, cpus_per_actor=2.0), gpus=0.0, cluster_cpus=8)
    assert cfg.max_actors == 4
    cfg = pool(JobConfig(**base, max_actors=1), gpus=0.0, cluster_cpus=8)
    assert (cfg.fuse_stages, cfg.max_actors) == (True, 1)  # a pool size given is kept
    cfg = pool(JobConfig(**base, min_actors=3), gpus=0.0, cluster_cpus=2)
    assert cfg.max_actors == 3
    # a heavy model on CPUs: as many actors as half the memory holds (SD in fp32: ~6 GiB each)
    sd = JobConfig(**{**base, "backend": "diffusers"})
    assert pool(sd, gpus=0.0, cluster_cpus=16, cluster_memory=24 * 2**30).max_actors == 1
    assert pool(sd, gpus=0.0, cluster_cpus=16, cluster_memory=4 * 2**30).max_actors == 1
    assert pool(JobConfig(**base), 0.0, 16, cluster_memory=64 * 2**30).max_actors == 16
    # GPU actors: CPU tasks feed them, and the pool stays at one actor unless told
    cfg = pool(JobConfig(**{**base, "backend": "diffusers"}), gpus=1.0, cluster_cpus=64)
    assert (cfg.fuse_stages, cfg.max_actors) == (False, 1)
    cfg = pool(JobConfig(**base, fuse_stages=False), gpus=0.0, cluster_cpus=8)
    assert (cfg.fuse_stages, cfg.max_actors) == (False, 1)  # split on CPU: tasks need cores


def test_fused_stage_in_process_with_the_defaults(tmp_path):
    """FusedStage as an executor calls it, with cpus_per_actor unset: PNG outputs of the
    recorded sha256, each the input outside the mask, bit for bit, and inpainted inside it."""
    import cv2

    from batch_inpaint.image.codec import check_png, decode_image
    from batch_inpaint.job.stages.fused import FusedStage

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows, inputs, marks = [], {}, {}
    for i in range(3):
        rid = f"r{i}"
        inputs[rid] = sample_image(W, H, i)
        m = np.zeros((H, W), bool)
        m[30 + i : 60 + i, 40:90] = True
        marks[rid] = m
        (tmp_path / "images" / f"{rid}.png").write_bytes(png(inputs[rid]))
        (tmp_path / "masks" / f"{rid}.png").write_bytes(png(m.astype(np.uint8) * 255))
        rows.append({"id": rid, "image": f"images/{rid}.png", "mask": f"masks/{rid}.png"})
    ctx = context(tmp_path)
    assert ctx.config.cpus_per_actor is None
    out = FusedStage(ctx)(table_of(rows)).to_pylist()
    assert [r["status"] for r in out] == ["ok"] * 3
    for r in out:
        data = (tmp_path / "out" / r["output"]).read_bytes()
        check_png(data, (W, H))
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        got, given, m = decode_image(data), inputs[r["id"]], marks[r["id"]]
        assert np.array_equal(got[~m], given[~m])
        telea = cv2.inpaint(given, m.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
        assert np.array_equal(got[m], telea[m])
