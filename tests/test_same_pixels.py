"""The same image, mask and seed give the same pixels, bit for bit, through every way in:
`batch-inpaint inpaint`, `inpaint_array`, the compat pipeline and the job on either executor
(in process and on Ray Data); for the opencv and tiny backends, full and crop modes, at odd sizes
(where a wrong size multiple shows: a 1001x667 frame is worked on at 1001x667 by opencv, never at
1000x664).

Every path plans with a model spec: in process the loaded model's, in the job the driver's
`model_spec(...)`. The reference is `inpaint_array`."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from batch_inpaint.image.inpaint import inpaint_array
from batch_inpaint.image.masks import mask_from_image
from batch_inpaint.models import load_inpainter
from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions, MaskOptions
from batch_inpaint.storage.uri import resolve
from tests.fixtures_ray import box_mask, png, sample_image

SIZES = [(1001, 667), (333, 251)]
SEED, STEPS, DILATE, FEATHER = 1234, 2, 2, 3
CASES = [(b, m) for b in ("opencv", "tiny") for m in ("full", "crop")]
# Full mode's longest working side: opencv works on the whole odd frame as it is; the tiny
# checkpoint's VAE attends over every latent pixel (a 1000x664 frame needs ~30 GB), so it works
# on a downscaled frame, which checks the resampling path too.
MAX_SIDE = {"opencv": 1024, "tiny": 128}


@dataclass
class Picture:
    name: str
    rgb: np.ndarray
    image: Path
    mask: Path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Picture]:
    """Odd-sized images with two masked boxes each: one inside, one touching the bottom-right
    corner, so crop mode cuts two regions where its windows do not overlap."""
    root = tmp_path_factory.mktemp("same-pixels")
    out = []
    for i, (w, h) in enumerate(SIZES):
        rgb = sample_image(w, h, 50 + i)
        mask = box_mask(w, h, (w // 10, h // 8, w // 10 + w // 7, h // 8 + h // 6))
        mask |= box_mask(w, h, (w - w // 9, h - h // 7, w, h))
        name = f"p{w}x{h}"
        image_path, mask_path = root / f"{name}.png", root / f"{name}-mask.png"
        image_path.write_bytes(png(rgb))
        mask_path.write_bytes(png(mask))
        out.append(Picture(name, rgb, image_path, mask_path))
    return out


def options(backend: str, mode: str) -> InpaintOptions:
    return InpaintOptions(
        generation=GenerationParams(num_inference_steps=STEPS, seed=SEED),
        mask=MaskOptions(dilate=DILATE, feather=FEATHER),
        geometry=GeometryOptions(mode=mode, max_side=MAX_SIDE[backend]),
    )


def model_arg(backend: str, tiny_model_dir: Path) -> str | None:
    return str(tiny_model_dir) if backend == "tiny" else None


@pytest.fixture(scope="module")
def inpainters(tiny_model_dir):
    return {
        "opencv": load_inpainter("opencv"),
        "tiny": load_inpainter("tiny", str(tiny_model_dir), device="cpu"),
    }


@pytest.fixture(scope="module")
def reference(pictures, inpainters):
    """(backend, mode, picture name) -> inpaint_array's result."""
    out = {}
    for backend, mode in CASES:
        for p in pictures:
            h, w = p.rgb.shape[:2]
            opts = options(backend, mode)
            mask = mask_from_image(p.mask.read_bytes(), (w, h), opts.mask)
            result = inpaint_array(p.rgb, mask, inpainters[backend], opts, seed=SEED)
            assert result.status == "ok" and result.image.shape == p.rgb.shape
            out[backend, mode, p.name] = result
    return out


def read_png(path: Path | str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(Path(path).read_bytes())).convert("RGB"))


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert not diff.any(), (
        f"{what}: {int((diff > 0).any(-1).sum())} pixels differ, max {diff.max()}"
    )


def test_reference_plans_with_the_models_spec(reference, pictures):
    """opencv (size multiple 1) works on the odd frame as it is; tiny on a multiple of 8."""
    for p in pictures:
        h, w = p.rgb.shape[:2]
        (full,) = reference["opencv", "full", p.name].regions
        assert full.work_size == (w, h)
        (full,) = reference["tiny", "full", p.name].regions
        assert max(full.work_size) == MAX_SIDE["tiny"] and full.work_size[1] % 8 == 0
    # crop mode: tiny (native 64) cuts one region per box; each region has its own seed
    assert len(reference["tiny", "crop", pictures[0].name].regions) == 2


@pytest.mark.parametrize("backend,mode", CASES)
def test_cli_inpaint(backend, mode, pictures, reference, tiny_model_dir, tmp_path, capsys):
    from batch_inpaint.cli import main

    for p in pictures:
        out = tmp_path / f"{p.name}.png"
        argv = ["inpaint", str(p.image), str(p.mask), "-o", str(out), "--backend", backend,
                "--mode", mode, "--seed", str(SEED), "--steps", str(STEPS), "--device", "cpu",
                "--dilate", str(DILATE), "--feather", str(FEATHER),
                "--max-side", str(MAX_SIDE[backend])]  # fmt: skip
        if backend == "tiny":
            argv += ["--model", str(tiny_model_dir)]
        assert main(argv) == 0, capsys.readouterr().err
        assert_same(read_png(out), reference[backend, mode, p.name].image, f"cli {p.name}")


@pytest.mark.parametrize("backend,mode", CASES)
def test_compat_pipeline(backend, mode, pictures, reference, tiny_model_dir):
    from batch_inpaint.compat import OutputKeys, Tasks, pipeline

    pipe = pipeline(
        Tasks.image_inpainting, model_arg(backend, tiny_model_dir), backend=backend, device="cpu"
    )
    for p in pictures:
        out = pipe(
            {
                "image": str(p.image),
                "mask": str(p.mask),
                "seed": SEED,
                "mode": mode,
                "num_inference_steps": STEPS,
                "dilate": DILATE,
                "feather": FEATHER,
                "max_side": MAX_SIDE[backend],
            }  # fmt: skip
        )
        rgb = out[OutputKeys.OUTPUT_IMG][:, :, ::-1]
        assert_same(rgb, reference[backend, mode, p.name].image, f"compat {p.name}")


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend,mode", CASES)
def test_job(backend, mode, executor, pictures, reference, tiny_model_dir, request, tmp_path):
    """Both executors (job/executors/): in process and on Ray Data, the same pixels."""
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.run import run_job

    if executor == "ray":
        request.getfixturevalue("ray_local")

    rows = {
        "id": [p.name for p in pictures],
        "image": [str(p.image) for p in pictures],
        "mask": [str(p.mask) for p in pictures],
        "seed": [SEED] * len(pictures),
    }
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({**rows, "seed": pa.array(rows["seed"], pa.int64())}), manifest)
    config = {
        "manifest": str(manifest),
        "output": str(tmp_path / "out"),
        "backend": backend,
        "device": "cpu",
        "mode": mode,
        "max_side": MAX_SIDE[backend],
        "steps": STEPS,
        "dilate": DILATE,
        "feather": FEATHER,
        "executor": executor,
    }
    if backend == "tiny":
        config["model"] = str(tiny_model_dir)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    summary = run_job(JobConfig.from_yaml(tmp_path / "job.yaml"), echo=lambda *_: None)
    assert summary["counts"] == {"ok": len(pictures), "error": 0, "skipped": 0}, summary
    meta = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "metadata").to_pylist()}
    for p in pictures:
        assert meta[p.name]["seed"] == SEED
        got = read_png(resolve(meta[p.name]["output"], str(tmp_path / "out")))
        assert_same(got, reference[backend, mode, p.name].image, f"job {p.name}")
