"""Cost per million images from the benchmark records (job/driver/cost.py): images/s per GPU
and dollars per million images per backend family and working size, measured where a GPU record
has them (a record file written here), else extrapolated from FLOPs, and said so, in the dry
run's estimate, its text and the Markdown table for docs/benchmarks.md."""

from __future__ import annotations

import json

import pytest

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.job.driver import cost
from batch_inpaint.job.driver.estimate import plan_job
from tests.fixtures_ray import local_dataset
from tests.job.driver.test_estimate import offline  # noqa: F401 - the fixture

H100 = "NVIDIA H100 80GB HBM3"


def write_records(folder, steps: int = 50):
    folder.mkdir(parents=True, exist_ok=True)
    w1 = {"workload": "w1", "device": H100, "started_at": "2027-01-02", "config": {"size": 512},
          "rows": [{"variant": "card", "steps": steps, "images_per_s": 1.0, "tflop_per_image": 84.16},
                   {"variant": "sdpa_b8_cl", "steps": steps, "images_per_s": 3.0,
                    "tflop_per_image": 84.16}]}  # fmt: skip
    older = {**w1, "started_at": "2026-12-30", "rows": [{**w1["rows"][1], "images_per_s": 9.0}]}
    l2 = {"workload": "l2", "device": "NVIDIA H200", "started_at": "2027-01-02",
          "config": {"size": 512},
          "rows": [{"dtype": "fp32", "batch": 64, "images_per_s": 80.0},
                   {"dtype": "bf16", "batch": 64, "images_per_s": 150.0},
                   {"dtype": "bf16", "batch": 128, "error": "out of GPU memory"}]}  # fmt: skip
    cpu = {"workload": "l1", "device": "cpu: AMD EPYC, 2 cores", "started_at": "2027-01-02",
           "rows": [{"size": 512, "images_per_s": 0.5, "images_per_s_per_core": 0.3}]}  # fmt: skip
    for name, rec in (("w1_h100", w1), ("w1_h100_old", older), ("l2_h200", l2), ("l1_cpu", cpu)):
        (folder / f"{name}.json").write_text(json.dumps(rec))
    return folder


def test_measured_rates_are_the_newest_records_best_per_family_size_and_gpu(tmp_path):
    rates = cost.measured_rates(cost.load_records(write_records(tmp_path / "r")))
    assert set(rates) == {("sd", 512, "H100", 50), ("lama", 512, "H200", None)}
    sd = rates[("sd", 512, "H100", 50)]
    assert (sd["images_per_s"], sd["best"]) == (3.0, "sdpa_b8_cl")  # the newer record, not 9.0
    assert sd["record"] == "bench/results/w1_h100.json"
    assert rates[("lama", 512, "H200", None)]["best"] == "bf16 batch 64"
    # 3 images/s on one $2.5/h GPU: a million images take 92.6 h, $231
    assert cost.per_million(3.0, 2.5) == pytest.approx(1e6 / 3 / 3600 * 2.5, rel=3e-3)  # 3 digits


def test_the_markdown_table_lists_every_measured_rate_or_says_there_is_none(tmp_path):
    records = cost.load_records(write_records(tmp_path / "r"))
    text = cost.markdown_table(records, {"*": 2.5})
    assert "| diffusers (SD2) | 512² | 50 | H100 | sdpa_b8_cl | 3.0 | 2.5 | 231 |" in text
    assert "| lama | 512² | – | H200 | bf16 batch 64 | 150.0 | 2.5 | 5 |" in text
    none = cost.markdown_table(cost.load_records(tmp_path / "empty"), {})
    assert "No GPU benchmark record yet" in none and "extrapolated from FLOPs" in none


def test_dry_run_uses_a_gpu_record_for_its_size_and_extrapolates_the_rest(
    tmp_path,
    offline,  # noqa: F811 - the fixture
    capsys,
):
    manifest, _ = local_dataset(tmp_path / "in", 3, w=512, h=512)
    cfg = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"))
    records = write_records(tmp_path / "r")
    e = plan_job(cfg, records_dir=records, gpu_hour_price="h100=2.5")["estimate"]
    m = e["per_million_images"]
    rows = {(r["size"], r["gpu"]): r for r in m["rows"]}
    h100 = rows[("512x512", "H100")]
    assert h100["source"] == "measured (bench/results/w1_h100.json, sdpa_b8_cl)"
    assert h100["images_per_s_per_gpu"] == 3.0 and h100["usd_per_million_images"] == 231.0
    assert h100["price_source"] == "--gpu-hour-price"
    a100 = rows[("512x512", "A100")]
    assert a100["source"].startswith("extrapolated from FLOPs")
    assert "stated $2/GPU-hour" in a100["price_source"]  # no price given for the A100
    assert m["method"] == "measured where a GPU record has the size, else extrapolated from FLOPs"

    # no GPU record at all: every figure says it is extrapolated
    e = plan_job(cfg, records_dir=tmp_path / "empty")["estimate"]
    m = e["per_million_images"]
    assert m["method"] == "extrapolated from FLOPs" and m["extrapolated"] == len(m["rows"])
    h100 = next(r for r in m["rows"] if r["gpu"] == "H100")
    assert h100["images_per_s_per_gpu"] == pytest.approx(989 * 0.35 / e["tflop_per_row"], rel=1e-2)
    assert h100["usd_per_million_images"] == pytest.approx(
        cost.per_million(h100["images_per_s_per_gpu"], 2.0), rel=1e-2)  # fmt: skip

    args = ["run", "--manifest", str(manifest), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "per GPU, images/s and $ per million images (extrapolated from FLOPs" in text
    assert "512x512: A10G" in text and "H100" in text


def test_lama_dry_run_reads_the_l2_record(tmp_path):
    from batch_inpaint.models.lama_tiny import make_tiny_lama

    pytest.importorskip("spandrel")
    lama = make_tiny_lama(tmp_path / "lama")
    manifest, _ = local_dataset(tmp_path / "in", 2, w=512, h=512)
    cfg = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), backend="lama",
                    model=str(lama), mode="full")  # fmt: skip
    e = plan_job(cfg, records_dir=write_records(tmp_path / "r"))["estimate"]
    rows = {(r["size"], r["gpu"]): r for r in e["per_million_images"]["rows"]}
    assert rows[("512x512", "H200")]["images_per_s_per_gpu"] == 150.0
    assert rows[("512x512", "H100")]["source"].startswith("extrapolated from FLOPs")
