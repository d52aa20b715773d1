"""`batch-inpaint demo`: it runs the best backend this machine can, says which, and never shows
random weights without the banner "random weights: noise expected"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from batch_inpaint.cli.demo import BANNER, Choice, Probe, choose_backend
from batch_inpaint.errors import ConfigError
from batch_inpaint.manifest.manifest import Manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTHING = Probe(gpu=False, spandrel=False, sd2_dir=None, lama_file=None)


def sd2_folder(root: Path) -> Path:
    """The files that make a folder a diffusers checkpoint (detection only reads names)."""
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    return root


def test_auto_without_weights_or_gpu_is_opencv_and_says_what_would_do_better():
    c = choose_backend("auto", None, NOTHING)
    assert c.backend == "opencv" and c.banner is None
    assert "the best that runs here" in c.headline()
    assert any("SD2: no weights" in h for h in c.hints)
    assert any("spandrel is not installed" in h for h in c.hints)


def test_auto_prefers_sd2_with_a_gpu_then_lama(tmp_path):
    sd2 = sd2_folder(tmp_path / "sd2")
    lama = tmp_path / "big-lama.safetensors"
    lama.write_bytes(b"x")
    everything = Probe(gpu=True, spandrel=True, sd2_dir=sd2, lama_file=lama)
    assert choose_backend("auto", None, everything) == Choice(
        "diffusers", str(sd2), "SD2-inpainting weights and a GPU are here"
    )
    no_gpu = Probe(gpu=False, spandrel=True, sd2_dir=sd2, lama_file=lama)
    assert choose_backend("auto", None, no_gpu).backend == "lama"
    only_sd2 = Probe(gpu=False, spandrel=False, sd2_dir=sd2, lama_file=None)
    c = choose_backend("auto", None, only_sd2)
    assert c.backend == "opencv" and any("no GPU" in h for h in c.hints)


def test_auto_with_model_picks_the_backend_its_files_are_for(tmp_path):
    sd2 = sd2_folder(tmp_path / "sd2")
    weights = tmp_path / "lama" / "big-lama.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    probe = Probe(gpu=True, spandrel=True, sd2_dir=None, lama_file=None)
    assert choose_backend("auto", str(sd2), probe).backend == "diffusers"
    assert choose_backend("auto", str(weights), probe).model == str(weights)
    assert choose_backend("auto", str(weights.parent), probe).backend == "lama"
    with pytest.raises(ConfigError, match="neither a diffusers folder"):
        choose_backend("auto", str(tmp_path), probe)


def test_random_weights_always_carry_the_banner(tmp_path, tiny_model_dir):
    assert (
        choose_backend("tiny", None, NOTHING).banner == BANNER == "random weights: noise expected"
    )
    probe = Probe(gpu=True, spandrel=True, sd2_dir=None, lama_file=None)
    # the tiny checkpoint is a diffusers folder: picked as SD2, shown with the banner all the same
    assert choose_backend("auto", str(tiny_model_dir), probe).banner == BANNER
    assert choose_backend("diffusers", str(tiny_model_dir), probe).banner == BANNER
    assert choose_backend("opencv", None, probe).banner is None


def test_lama_asked_for_without_weights_says_where_to_put_them():
    with pytest.raises(ConfigError, match=r"big-lama\.safetensors.*docs/models\.md"):
        choose_backend("lama", None, NOTHING)


# -- the command, end to end ------------------------------------------------------------------
def two_rows(tmp_path: Path) -> str:
    rows = [{"id": n, "image": str(EXAMPLES / "images" / f"{n}.png"),
             "mask": str(EXAMPLES / "masks" / f"{n}.png")} for n in ("coffee", "chelsea")]  # fmt: skip
    path = str(tmp_path / "manifest.parquet")
    Manifest.from_records(rows).write(path)
    return path


def demo(tmp_path: Path, ray_local, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`batch-inpaint demo` in a clean environment: no weights in any cache, so what it picks
    does not depend on this machine's downloads."""
    out = tmp_path / "demo-output"
    empty = tmp_path / "caches"
    env = ray_local.driver_env(HF_HUB_CACHE=str(empty / "hf"), BATCH_INPAINT_CACHE=str(empty))
    exe = Path(sys.executable).with_name("batch-inpaint")
    cmd = [str(exe), "demo", "--manifest", two_rows(tmp_path), "--output", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def roughness(rgb: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute difference from a blurred copy, over `where`: noise scores high."""
    im = Image.fromarray(rgb)
    blurred = np.asarray(im.filter(ImageFilter.GaussianBlur(2)), np.float32)
    return float(np.abs(rgb.astype(np.float32) - blurred).mean(axis=-1)[where].mean())


def sheet_parts(path: Path, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(caption strip, [input, mask, output]) of a side-by-side picture."""
    a = np.asarray(Image.open(path).convert("RGB"))
    body = a[-(a.shape[0] - 36) :]
    return a[:36], [body[:, i * width : (i + 1) * width] for i in range(3)]


@pytest.mark.slow
def test_demo_here_runs_opencv_says_so_and_shows_fills(tmp_path, ray_local):
    proc, out = demo(tmp_path, ray_local)
    assert "demo: backend opencv: classical fill" in proc.stdout
    assert "for better fills: SD2: no weights" in proc.stdout
    assert BANNER.upper() not in proc.stdout
    # the hands-free text pass: no masks, the shipped detector named, every row filled and checked
    assert "demo: text detector rapidocr (PP-OCRv6 small det" in proc.stdout
    for rid in ("coffee", "astronaut", "rocket"):
        assert f"demo:   {rid}: ok, 2 text boxes, residual score 0.00" in proc.stdout
    assert len(list((tmp_path / "demo-output-text/output/side_by_side").glob("*.png"))) == 3
    run = json.loads((out / "run.json").read_text())
    assert run["demo_backend"].startswith("backend opencv") and run["demo_banner"] is None
    assert 'id="f-backend">opencv<' in (out / "report.html").read_text()  # the report's header
    sheets = sorted((out / "side_by_side").glob("*.png"))
    assert [p.stem for p in sheets] == ["chelsea", "coffee"]
    for path in sheets:
        w = Image.open(EXAMPLES / "images" / path.name).width
        strip, (image, mask, result) = sheet_parts(path, w)
        assert strip.mean(axis=(0, 1))[0] < 100, "a grey caption, not the red banner"
        inside = mask[..., 0] > 127
        assert inside.sum() > 500 and (result[inside] != image[inside]).any()
        # a fill is no rougher than the picture it sits in; noise is several times rougher
        assert roughness(result, inside) <= roughness(image, ~inside) * 1.2, path.name


@pytest.mark.slow
def test_demo_with_the_tiny_model_prints_and_reports_the_banner(tmp_path, ray_local):
    proc, out = demo(tmp_path, ray_local, "--backend", "tiny", "--steps", "2", "--no-text-pass")
    assert proc.stdout.count("*** RANDOM WEIGHTS: NOISE EXPECTED ***") == 2  # before and after
    run = json.loads((out / "run.json").read_text())
    assert run["demo_banner"] == BANNER
    assert BANNER in (out / "report.html").read_text().lower()
    for path in (out / "side_by_side").glob("*.png"):
        strip, _ = sheet_parts(path, 1)
        r, g, b = strip.mean(axis=(0, 1))
        assert r > 150 and g < 80 and b < 80, "the banner's red strip"
    assert os.path.getsize(out / "report.html") > 0
