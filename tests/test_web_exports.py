"""Issue 25, item 13, without a browser: a mask of another size is resized on the page and the
exported job config says so (a job given the same mask then does the same instead of refusing
it); "Add to manifest" names the manifest by its absolute path; `serve` prints where the page is
and never gradio's "set share=True" hint. (The message's position: test_web_browser.py.)"""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from batch_inpaint.config import JobConfig
from batch_inpaint.job.run import run_job
from batch_inpaint.manifest.manifest import Manifest
from batch_inpaint.models import load_inpainter
from batch_inpaint.web import handlers as h
from batch_inpaint.web import inputs

REPO = Path(__file__).resolve().parents[1]


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_a_resized_mask_is_in_the_exported_yaml_and_a_job_takes_it(tmp_path):
    settings = inputs.ServeSettings(manifest_root=tmp_path / "m")
    opencv = load_inpainter("opencv")
    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    src.mkdir()
    image = src / "photo.png"
    image.write_bytes(png(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)))
    small = np.zeros((32, 48), np.uint8)  # half the image's size
    small[8:16, 8:24] = 255
    (src / "half.png").write_bytes(png(small))
    state, _ = h.upload_image(str(image), settings)
    state, _ = h.upload_mask(str(src / "half.png"), state, settings)
    assert state.mask_resized
    editor = {"background": str(image), "layers": []}
    result, state = h.run(state, editor, h.Fields(), opencv, settings)
    job = yaml.safe_load(h.job_yaml(result.params))
    assert job["mask_resize"] is True

    # the job, with the exported config, the same image and the same (half-size) mask: it
    # resizes it as the page did, and fills the same pixels
    Manifest.from_records([{"id": "photo", "image": str(image), "mask": str(src / "half.png")}]
                          ).write(str(src / "manifest.parquet"))  # fmt: skip
    cfg = JobConfig.from_dict({**job, "manifest": str(src / "manifest.parquet"),
                               "output": str(tmp_path / "out"), "executor": "local"})  # fmt: skip
    summary = run_job(cfg, echo=lambda _: None)
    assert summary["counts"]["ok"] == 1, summary

    # a mask of the image's own size: nothing resized, and the export says so
    (src / "full.png").write_bytes(png(np.kron(small, np.ones((2, 2), np.uint8))))
    state, _ = h.upload_mask(str(src / "full.png"), state, settings)
    assert not state.mask_resized
    result, _ = h.run(state, editor, h.Fields(), opencv, settings)
    assert yaml.safe_load(h.job_yaml(result.params))["mask_resize"] is False


def test_add_to_manifest_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = inputs.ServeSettings(manifest_root=Path("relative-root"))
    image = tmp_path / "photo.png"
    image.write_bytes(png(np.full((32, 32, 3), 80, np.uint8)))
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[4:12, 4:12, 3] = 255
    (tmp_path / "layer.png").write_bytes(png(layer))
    state, _ = h.upload_image(str(image), settings)
    editor = {"background": str(image), "layers": [str(tmp_path / "layer.png")]}
    said, _ = h.add(state, editor, h.Fields(), "mine", {"backend": "opencv"}, settings)
    written = tmp_path / "relative-root" / "mine" / "manifest.parquet"
    assert written.is_file() and f"`{written}`" in said and said.startswith("Added row")


@pytest.mark.slow
def test_serve_says_where_the_page_is_and_not_share_true(tmp_path):
    pytest.importorskip("gradio")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-c", "import sys; from batch_inpaint.cli import main; sys.exit(main())",
           "serve", "--backend", "opencv", "--port", str(port), "--manifest-root",
           str(tmp_path / "m")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=tmp_path)  # fmt: skip
    out = b""
    try:
        deadline = time.monotonic() + 120
        while b"serve: the page is at" not in out and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if select.select([proc.stdout], [], [], 1.0)[0]:
                out += os.read(proc.stdout.fileno(), 65536)
        time.sleep(1.0)  # anything gradio would print after it starts
        while select.select([proc.stdout], [], [], 0.2)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = out.decode(errors="replace")
    assert f"serve: the page is at http://127.0.0.1:{port}/ (Ctrl-C stops the server)" in text, text
    assert "share=True" not in text and "public link" not in text, text
