"""What `batch-inpaint run` prints: our lines only (Ray's own logs stay in Ray's log files unless
--verbose), a progress display with a percentage, and the summary last. The runs are real
subprocesses on a private Ray instance, with stdout a pipe (not a terminal), as in CI logs."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from batch_inpaint.job.report.progress import Progress, native_stderr_to

REPO = Path(__file__).resolve().parents[1]
RAY_LINE = re.compile(r"\t(DEBUG|INFO|WARNING|ERROR) \S+\.py:\d+ -- |core_worker\.cc|\(\w+ pid=\d+")
PROGRESS = re.compile(r"^progress: (\d+)/(\d+) rows \((\d+)%\), [\d.]+ rows/s, elapsed [\d:]+, "
                      r"ETA [\d:?]+, (\d+) errors?$")  # fmt: skip


def run_cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", "import sys; from batch_inpaint.cli import main; "
           "sys.exit(main())", "run", "--manifest",
           str(REPO / "examples" / "manifest.parquet"), "--output", str(out), "--backend",
           "opencv", "--progress-interval-s", "0", "--executor", "ray", *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_run_prints_progress_and_the_summary_and_no_ray_logs(tmp_path):
    got = run_cli(tmp_path / "out")
    text = got.stdout + got.stderr
    assert got.returncode == 0, text
    assert not [line for line in text.splitlines() if RAY_LINE.search(line)], text
    assert "Token authentication" not in text and "Progress will be logged" not in text
    lines = got.stdout.rstrip("\n").splitlines()
    progress = [m for m in map(PROGRESS.match, lines) if m]
    assert progress and progress[-1].groups() == ("8", "8", "100", "0"), text
    last_progress = max(i for i, line in enumerate(lines) if PROGRESS.match(line))
    tail = lines[last_progress + 1 :]
    assert tail[0].startswith("batch-inpaint: SUCCESS - 8 ok") and tail[-1].startswith("  report:")
    assert got.stderr == "", got.stderr
    # Ray's lines went to its log files: the driver's native stderr among them
    logs = re.search(r"Ray's own logs are in ([^;]+);", got.stdout).group(1)
    assert Path(logs, "ray-data", "ray-data.log").is_file() or Path(logs, "ray-data.log").is_file()


@pytest.mark.slow
def test_verbose_shows_rays_lines_again(tmp_path):
    got = run_cli(tmp_path / "out", "--verbose")
    text = got.stdout + got.stderr
    assert got.returncode == 0, text
    assert [line for line in text.splitlines() if RAY_LINE.search(line)], text
    assert "Ray's own logs are in" not in text
    assert any(PROGRESS.match(line) for line in got.stdout.splitlines())


def test_plain_lines_every_interval_and_one_at_the_end():
    said: list[str] = []
    p = Progress(10, interval_s=0.05, echo=said.append)
    p.update(3, 1)  # before the first interval: nothing yet
    time.sleep(0.06)
    p.update(2, 0)
    p.update(1, 0)
    p.close()
    assert [PROGRESS.match(s).groups() for s in said] == [("5", "10", "50", "1"), ("6", "10", "60", "1")]  # fmt: skip
    assert p.bar is None and "ETA" in said[0]


def test_a_terminal_gets_one_bar_with_percentage_rate_eta_and_errors():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        p = Progress(4, interval_s=0.0, stream=tty)  # echo is print: the bar is allowed
        assert p.bar is not None
        for _ in range(4):
            p.update(1, 1)
        p.close()
        tty.flush()
        drawn = b""
        while select.select([master], [], [], 0.5)[0]:  # everything the bar drew
            drawn += os.read(master, 65536)
        drawn = drawn.decode("utf-8", "replace")
    os.close(master)
    final = drawn.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"100%\|.*\| 4/4 \[[\d:]+<00:00, .*row.*, 4 errors\]", final), final
    not_tty = Progress(4, interval_s=0.0, echo=print, stream=open(os.devnull, "w"))  # noqa: SIM115
    assert not_tty.bar is None


def test_native_writes_to_fd2_go_to_the_file_and_python_stderr_stays(tmp_path):
    log = tmp_path / "native.err"
    code = (
        "import os, sys\n"
        "from batch_inpaint.job.report.progress import native_stderr_to\n"
        f"with native_stderr_to({str(log)!r}):\n"
        "    os.write(2, b'E core_worker.cc: harmless but alarming\\n')\n"
        "    print('python says', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert got.returncode == 0, got.stderr
    assert got.stderr == "python says\nafter\n"
    assert log.read_text() == "E core_worker.cc: harmless but alarming\n"
    with native_stderr_to(None):  # nothing to do: no file given
        pass
