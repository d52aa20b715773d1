"""The benchmark harness, smoke-tested on the CPU with the tiny checkpoint (no GPU, < 60 s).

Only the harness is checked here (it runs, every workload writes a well-formed record, the sweep
is plotted, GPU workloads refuse a CPU unless asked); the numbers themselves mean nothing."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("moto")

from bench import WORKLOADS  # noqa: E402
from bench.__main__ import main, smoke  # noqa: E402

KEYS = {"schema", "workload", "device", "versions", "config", "rows", "ratios", "command"}


def test_smoke_runs_every_workload_and_writes_its_record(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        records = smoke(["--results-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)

    assert [r.workload for r in records] == list(WORKLOADS)
    written = {p.name.split("_")[0]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(written) == set(WORKLOADS)
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
