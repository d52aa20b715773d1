"""The benchmark harness, smoke-tested on the CPU with the tiny checkpoint (no GPU, < 60 s).

Only the harness is checked here (it runs, every workload writes a well-formed record, the sweep
is plotted, GPU workloads refuse a CPU unless asked); the numbers themselves mean nothing."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("moto")

from bench import WORKLOADS  # noqa: E402
from bench.__main__ import SMOKE_SKIP, main, smoke  # noqa: E402

KEYS = {"schema", "workload", "device", "versions", "config", "rows", "ratios", "command"}


def test_smoke_runs_every_workload_and_writes_its_record(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        records = smoke(["--results-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)

    smoked = [w for w in WORKLOADS if w not in SMOKE_SKIP]  # sd2-job: test below (Ray)
    assert [r.workload for r in records] == smoked
    written = {p.name.split("_")[0]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(written) == set(smoked)
    for name, rec in written.items():
        assert set(rec) >= KEYS, name
        assert rec["rows"], f"{name} measured nothing"
        assert rec["device"].startswith("cpu: ") and rec["device"].endswith(" cores")
        assert rec["versions"]["torch"] and rec["command"].startswith("python -m bench ")
    assert written["arch"]["goals"]["params_match"] is True
    for name in ("w1", "w2", "w3", "w5"):
        assert all(r["images_per_s"] > 0 and r["s_per_image"] > 0 for r in written[name]["rows"])
        assert written[name]["smoke"] is True
    assert written["w1"]["ratios"]["best_vs_card_images_per_s"] > 0
    assert written["w2"]["ratios"]["speedup"] > 0
    assert {r["mode"] for r in written["w4"]["rows"]} == {"full", "crop"}
    assert written["w6"]["rows"][1]["rows_not_ok"] == 0
    assert {r["encoding"] for r in written["c1"]["rows"]} >= {"png-1", "png-9", "webp-q90"}
    assert written["c2"]["rows"][0]["rows_not_ok"] == 0
    plots = list(tmp_path.glob("w5_*.png"))
    assert plots and plots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "== w1" in capsys.readouterr().out  # the table is printed

    if not torch.cuda.is_available():  # a GPU workload refuses a CPU it was not asked to use
        assert main(["w1", "--results-dir", str(tmp_path / "refused")]) == 2
        assert "CUDA" in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_sd2_job_runs_the_job_and_records_load_memory_and_object_store(ray_local, tmp_path, capsys):
    """sd2-job's harness through the real job on the session's local Ray, on the tiny checkpoint:
    the full-size architecture takes minutes here (a 2.6 GB checkpoint loaded into ~6 GB per
    actor, ~20 s per row at 128²), too long for a test."""
    cache = tmp_path / "cache"
    code = main(["sd2-job", "--tiny", "--rows", "2", "--size", "64", "--width", "96",
                 "--steps", "1", "--cache-dir", str(cache), "--results-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    (path,) = tmp_path.glob("sd2-job_*.json")
    rec = json.loads(path.read_text())
    assert set(rec) >= KEYS and rec["smoke"] is True
    goals = rec["goals"]
    assert goals["success"] is True and goals["rows_per_s"] > 0
    assert len(goals["model_load_s_per_actor"]) == 1 and goals["model_load_s_per_actor"][0] > 0
    assert len(goals["actor_peak_rss_gib"]) == 1 and goals["actor_peak_rss_gib"][0] > 0.1
    assert goals["object_store_peak_mib"] > 0 and goals["object_store_created_bytes_per_row"] > 0
    job = next(r for r in rec["rows"] if r["what"] == "job")
    assert job["rows"] == job["ok"] == 2 and job["first_output_s"] is not None
    actor = next(r for r in rec["rows"] if r["what"] == "model actor")
    assert "ModelStage" in actor["title"]
    assert rec["config"]["model"]["kind"] == "tiny" and rec["config"]["max_side"] == 64
    assert "== sd2-job" in capsys.readouterr().out
