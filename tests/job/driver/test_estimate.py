"""The dry run (job/driver/estimate.py, `run --dry-run`): the driver's checks, rows to do after resume, a
planned sample and the cost estimate, with no Ray imported and nothing written; the FLOP model and
GPU table (job/driver/cost.py) against the recorded architecture benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.driver import cost, plan
from batch_inpaint.job.driver.estimate import plan_job
from batch_inpaint.storage.store import Storage
from tests.fixtures_ray import box_mask, local_dataset, manifest_bytes, png, sample_image
from tests.job.report.test_report import finished_output

REPO = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def offline(monkeypatch, tmp_path_factory):
    """The default SD2 id's configs can't be fetched here; say so at once (spec 'assumed').
    Its weights are "cached" (empty files): a run's check that the model can be had passes."""
    cache = tmp_path_factory.mktemp("hf-cache")
    snap = cache / "models--sd2-community--stable-diffusion-2-inpainting" / "snapshots" / "c0"
    (snap / "unet").mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")
    (snap / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("c0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def grown_output(root: Path) -> tuple[JobConfig, Path]:
    """A finished output (4 ok, 1 not_found) whose manifest has since gained 2 rows."""
    cfg, _ = finished_output(root)
    manifest = Path(cfg.manifest)
    _, rows = local_dataset(root / "in", 6, w=96, h=72)
    rows.append({"id": "gone", "image": "images/gone.png", "mask": "masks/r000.png"})
    manifest.write_bytes(manifest_bytes(rows))
    return cfg, manifest


def test_dry_run_writes_nothing_and_starts_no_ray(tmp_path):
    cfg, manifest = grown_output(tmp_path)
    out, src = Path(cfg.output), manifest.parent
    before = snapshot(out), snapshot(src)
    code = (
        "import json, sys\n"
        "from batch_inpaint.cli import main\n"
        f"rc = main(['run', '--manifest', {str(manifest)!r}, '--output', {str(out)!r},\n"
        "            '--backend', 'opencv', '--dry-run', '--json'])\n"
        "print(json.dumps({'rc': rc, 'ray': sorted(m for m in sys.modules\n"
        "                                          if m == 'ray' or m.startswith('ray.'))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert got.returncode == 0, got.stderr
    plan_text, tail = got.stdout.rsplit("\n{", 1)
    assert json.loads("{" + tail) == {"rc": 0, "ray": []}
    planned = json.loads(plan_text)
    assert planned["rows"] == {"manifest": 7, "done": 5, "bad_ids": 0, "to_do": 2}
    assert planned["plan"]["sampled"] == 2 and planned["output_state"] == "a batch-inpaint output"
    assert (snapshot(out), snapshot(src)) == before  # byte for byte
    new = tmp_path / "never-made"
    assert main(["run", "--manifest", str(manifest), "--output", str(new), "--backend", "opencv",
                 "--dry-run"]) == 0  # fmt: skip
    assert not new.exists()


def test_resume_and_retry_errors_change_what_is_to_do(tmp_path):
    cfg, _ = grown_output(tmp_path)
    settings = {**cfg.to_dict(), "backend": "opencv"}
    assert plan_job(JobConfig(**settings))["rows"]["to_do"] == 2
    again = plan_job(JobConfig(**{**settings, "retry_errors": True}))
    assert again["rows"]["to_do"] == 3  # the not_found row again
    everything = plan_job(JobConfig(**{**settings, "resume": False}), sample=0)
    assert everything["rows"]["to_do"] == 7 and everything["plan"]["sampled"] == 0


def test_a_held_lock_and_damaged_results_are_reported_not_touched(tmp_path):
    cfg, _ = grown_output(tmp_path)
    damaged = Path(cfg.output, "metadata", "part-x-00000.parquet")
    damaged.write_bytes(b"not parquet")
    with plan.lock_for(plan.check_run(cfg, Storage(), echo=lambda *_: None)[0]):
        lock = Path(cfg.output, "_LOCK").read_bytes()
        got = plan_job(cfg)
        assert got["lock"]["pid"] == os.getpid() and got["lock"]["host"]
        assert Path(cfg.output, "_LOCK").read_bytes() == lock
    assert got["damaged_results"] == [str(damaged)] and damaged.read_bytes() == b"not parquet"
    assert not Path(cfg.output, "metadata", "_damaged").exists()


def test_sample_is_planned_as_the_prepare_stage_plans_it(tmp_path, offline):
    """Full mode: one pass per row at the spec's size; crop mode: one pass per far-apart box."""
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(4):
        (root / "images" / f"r{i}.png").write_bytes(png(sample_image(1600, 1200, i)))
        m = box_mask(1600, 1200, (40, 40, 140, 140)) | box_mask(
            1600, 1200, (1400, 1000, 1500, 1100)
        )
        (root / "masks" / f"r{i}.png").write_bytes(png(m))
        rows.append({"id": f"r{i}", "image": f"images/r{i}.png", "mask": f"masks/r{i}.png"})
    rows.append({"id": "empty", "image": "images/r0.png",
                 "mask_boxes": [[10.0, 10.0, 10.0, 10.0]]})  # fmt: skip
    rows.append({"id": "lost", "image": "images/nope.png", "mask": "masks/r0.png"})
    (root / "manifest.parquet").write_bytes(manifest_bytes(rows))
    base = {"manifest": str(root / "manifest.parquet"), "output": str(tmp_path / "out")}
    full = plan_job(JobConfig(**base, max_side=1024))
    assert full["model"]["native_size"] == 512 and full["model"]["spec_source"] == "assumed"
    assert full["plan"]["passes_by_size"] == {"1024x768": 4}
    assert full["plan"]["status"] == {"ok": 4, "error": 2}  # the bad box and the missing file
    assert full["plan"]["errors_by_kind"] == {"mask": 1, "not_found": 1}
    assert full["validation"]["by_kind"].get("not_found") == 1
    crop = plan_job(JobConfig(**base, mode="crop"))
    assert crop["plan"]["passes_by_size"] == {"512x512": 8}
    assert crop["plan"]["passes_per_row"] == pytest.approx(8 / 6, abs=1e-3)
    flops = cost.SDFlops(next(r for r in cost.load_records() if r["workload"] == "arch"))
    e = crop["estimate"]
    assert e["tflop_per_row"] == pytest.approx(
        8 * flops.per_pass(512 * 512, 50, 7.5, 1.0) / 6, rel=1e-3
    )
    h100 = next(r for r in e["gpu"]["rows"] if r["gpu"] == "H100")
    assert h100["seconds_per_row"] == pytest.approx(e["tflop_per_row"] / (989 * 0.35), rel=1e-3)
    assert h100["gpu_hours"] == pytest.approx(6 * h100["seconds_per_row"] / 3600, rel=1e-2)
    assert "extrapolated from FLOPs" in h100["source"]
    assert any("extrapolated from FLOPs, not measured" in n for n in e["notes"])


def test_flops_follow_the_recorded_architecture():
    arch = next(r for r in cost.load_records() if r["workload"] == "arch")
    flops = cost.SDFlops(arch)
    assert "arch_" in flops.source
    assert flops.per_pass(512 * 512, 50, 7.5, 1.0) == pytest.approx(84.0, rel=0.01)  # ≈ 84.16
    assert flops.per_pass(1920 * 1080, 50, 7.5, 1.0) == pytest.approx(1339.7, rel=0.01)
    assert flops.per_pass(512 * 512, 50, 1.0, 1.0) == pytest.approx(50 * 0.804 + 3.632, rel=0.01)
    assert flops.per_pass(512 * 512, 50, 7.5, 0.5) == pytest.approx(50 * 0.804 + 3.632, rel=0.01)
    between = flops.parts(640 * 640)[0]
    assert 0.804 * (640 / 512) ** 2 < between < 2.149  # attention: faster than pixel count
    assert cost.SDFlops(None).per_pass(512 * 512, 50, 7.5, 1.0) == pytest.approx(84.0, rel=0.01)


def test_a_gpu_record_is_used_where_it_exists(tmp_path):
    record = {"workload": "w1", "device": "NVIDIA H100 80GB HBM3", "started_at": "2027-01-01",
              "rows": [{"variant": "card", "images_per_s": 1.0, "tflop_per_image": 84.16},
                       {"variant": "sdpa_b8", "images_per_s": 3.0, "tflop_per_image": 84.16}]}  # fmt: skip
    (tmp_path / "w1_h100.json").write_text(json.dumps(record))
    table = cost.gpu_table(84.16, 3600, cost.load_records(tmp_path), 2, {"*": 2.0})
    rows = {r["gpu"]: r for r in table["rows"]}
    assert rows["H100"]["source"] == "measured (bench/results/w1_h100.json)"
    assert rows["H100"]["rows_per_s"] == pytest.approx(3.0)
    assert rows["H100"]["gpu_hours"] == pytest.approx(1 / 3, rel=1e-2)  # 3 significant digits
    assert rows["H100"]["wall_hours"] == pytest.approx(1 / 6, rel=1e-2)  # on 2 GPUs
    assert table["utilisation"] == pytest.approx(3 * 84.16 / 989, rel=1e-2)
    assert "H100" in table["utilisation_source"] and "w1_h100.json" in table["utilisation_source"]
    assert rows["A100"]["source"].startswith("extrapolated") and rows["A100"]["cost"] is not None
    assert cost.gpu_type("NVIDIA A10G") == "A10G" and cost.gpu_type("NVIDIA H200") == "H200"


def test_gpu_hour_prices():
    assert cost.parse_prices("2.5") == {"*": 2.5}
    assert cost.parse_prices("h100=3.5, a100=2") == {"H100": 3.5, "A100": 2.0}
    with pytest.raises(ConfigError, match="unknown GPU type 'v99'"):
        cost.parse_prices("v99=1")
    with pytest.raises(ConfigError, match="'cheap' is not a price"):
        cost.parse_prices("h100=cheap")


def test_cli_dry_run_prints_a_readable_plan(tmp_path, capsys, offline):
    manifest, _ = local_dataset(tmp_path / "in", 3, w=200, h=150)
    args = ["run", "--manifest", str(manifest), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main([*args, "--gpu-hour-price", "h100=3.5,a100=2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("batch-inpaint dry run: nothing was written and Ray was not started")
    assert "rows: 3 in the manifest, 0 done, 0 with a duplicate or missing id, 3 to do" in text
    assert "512x384" in text and "arch_cpu-amd-epyc" in text
    assert "extrapolated from FLOPs" in text and "35%" in text and "cost" in text
    assert main([*args, "--gpu-hour-price", "v99=1"]) == 2
    assert "unknown GPU type" in capsys.readouterr().err
    assert main([*args[:-1], "--json"]) == 2
    assert "--json goes with --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cpu_backends_are_estimated_in_core_hours(tmp_path):
    manifest, _ = local_dataset(tmp_path / "in", 2, w=512, h=512)
    cfg = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), backend="opencv")
    e = plan_job(cfg)["estimate"]
    assert e["gpu"] is None and "c2_" in e["cpu"]["record"]
    rate = e["cpu"]["rows_per_s_per_core_at_512"]
    assert e["cpu"]["core_hours"] == pytest.approx(2 / rate / 3600, rel=1e-2)
    assert np.isfinite(rate) and rate > 0
