"""scripts/gpu-check.sh on this CPU machine: its dry run is what CI can check of the GPU machine's
one command. The wheels folder is a temporary one holding a small pure-Python wheel, so the
offline install for Python 3.12 is exercised whether or not wheels/ was prepared here.

The dry run is slow: it imports torch in several processes and runs `bench gpu --quick` on the tiny checkpoint
(about a minute on a quiet 2-core machine)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None,
    reason="the script is bash for the Linux GPU machine",
)


def write_wheel(folder: Path, name: str = "gpu_check_probe", version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel (one module), written by hand: no build tool needed."""
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return whl


@pytest.mark.slow
def test_dry_run_without_a_gpu_installs_tests_and_benches(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run scripts/gpu-check.sh itself")
    out, wheels = tmp_path / "out", tmp_path / "wheels"
    out.mkdir()
    wheels.mkdir()
    write_wheel(wheels)
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(wheels)}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]

    log = (out / "gpu-check.log").read_text()
    assert log.strip() == proc.stdout.strip()  # the log is everything printed
    assert "device: no GPU" in log and "no GPU was present" in log and "dry run: " in log
    # the carried wheels install offline for the GPU machine's Python, and are used
    assert "--no-index" in log and "--python-version 3.12" in log
    assert "import gpu_check_probe: 1.0" in log
    assert "hidden as on the GPU machine: ray s3fs moto" in log
    assert "tests/gpu:  passed" in log and "wheels:     ok" in log

    with tarfile.open(out / "records.tar.gz") as tar:
        names = tar.getnames()
        junit = ET.fromstring(tar.extractfile("pytest-gpu.xml").read())
        records = {
            n.split("_")[0]: json.loads(tar.extractfile(n).read())
            for n in names
            if n.endswith(".json")
        }
    suite = junit if junit.tag == "testsuite" else junit.find("testsuite")
    assert int(suite.get("tests")) > 0 and suite.get("skipped") == suite.get("tests")
    assert {"w1", "w2", "w3", "w4", "w5", "w6", "j1"} <= set(records)
    for name, record in records.items():
        assert record["device"].startswith("cpu: ") and record["rows"], name
        assert "--quick" in record["command"] and record["smoke"] is True, name
    assert any(n.startswith("w5_") and n.endswith(".png") for n in names)
    # j1: `batch-inpaint run` itself, as the GPU machine will run it, each command shown first
    runs = [line for line in log.splitlines() if line.startswith("+ batch-inpaint run ")]
    assert len(runs) == 3 and all("--executor local" in line for line in runs), runs
    assert any("--backend lama" in line and "--config" in line for line in runs)  # text detect
    j1 = {row["run"]: row for row in records["j1"]["rows"]}
    assert [j1[r]["exit"] for r in ("sd2", "lama", "text")] == [0, 0, 0], j1
    assert j1["sd2"]["ok"] == j1["sd2"]["rows"] > 0 and j1["model_loop"]["rows_per_s"] > 0
    assert records["j1"]["ratios"]["sd2_job_vs_model_loop_rows_per_s"] > 0


def test_unknown_argument_is_refused_with_the_usage():
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "unknown argument '--bogus'" in proc.stderr and "--dry-run" in proc.stderr
