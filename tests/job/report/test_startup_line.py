"""Issue 25, item 10: while Ray and the model actors start, one line says so with the elapsed time
(redrawn in place on a terminal, a few lines in a log), and the dashboard URL is printed when
there is one."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import termios
import time

from batch_inpaint.config import JobConfig
from batch_inpaint.job.report.startup import Startup
from batch_inpaint.job.run import run_job
from tests.fixtures_ray import local_dataset


def test_a_terminal_gets_one_line_redrawn_with_the_elapsed_time(capsys):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        with Startup("Ray and the model actors", print, stream=tty, tick_s=0.05) as startup:
            assert startup.tty
            time.sleep(0.3)
            startup.echo("batch-inpaint: Ray: a line of the driver's own")
        tty.flush()
        drawn = b""
        while select.select([master], [], [], 0.3)[0]:
            drawn += os.read(master, 65536)
    os.close(master)
    text = drawn.decode()
    assert "\n" not in text  # one line, redrawn: never a new line per tick
    frames = [f for f in text.split("\r") if f.strip("\x1b[K")]
    assert len(frames) >= 4, text
    assert all(re.fullmatch(r"batch-inpaint: starting Ray and the model actors\.\.\. \d+ s\x1b\[K", f)
               for f in frames), frames  # fmt: skip
    assert text.endswith("\r\x1b[K")  # cleared before the progress display takes over
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["batch-inpaint: Ray: a line of the driver's own",
                       "batch-inpaint: Ray and the model actors started in 0 s"]  # fmt: skip


def test_a_log_gets_a_few_lines_at_doubling_intervals():
    said: list[str] = []
    with Startup("Ray and the model actors", said.append, log_first_s=0.1):
        time.sleep(0.55)  # "still starting" at 0.1, 0.2 and 0.4 s: not one line a second
    assert said[0] == "batch-inpaint: starting Ray and the model actors..."
    still = [s for s in said if s.startswith("batch-inpaint: still starting Ray")]
    assert len(still) == 3, said
    assert re.fullmatch(r"batch-inpaint: Ray and the model actors started in [01] s", said[-1])
    failed: list[str] = []
    try:
        with Startup("Ray and the model actors", failed.append):
            raise RuntimeError("the cluster is gone")
    except RuntimeError:
        pass
    assert failed == ["batch-inpaint: starting Ray and the model actors..."]  # no "started"


def test_a_ray_run_says_it_is_starting_before_the_first_progress_line(ray_local, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    # Ray's own way to name the dashboard (ray_local runs without one): the run prints it
    monkeypatch.setenv("RAY_OVERRIDE_DASHBOARD_URL", "127.0.0.1:8265")
    manifest, rows = local_dataset(tmp_path / "in", 4)
    said: list[str] = []
    settings = dict(manifest=str(manifest), backend="opencv", executor="ray",
                    progress_interval_s=0.0, device="cpu")  # fmt: skip
    summary = run_job(JobConfig(output=str(tmp_path / "out"), **settings), echo=said.append)
    assert summary["counts"]["ok"] == 4, said
    first_progress = next(i for i, s in enumerate(said) if s.startswith("progress: "))
    starting = said.index("batch-inpaint: starting Ray and the model actors...")
    started = next(i for i, s in enumerate(said)
                   if re.fullmatch(r"batch-inpaint: Ray and the model actors started in \d+ s", s))  # fmt: skip
    assert said.index("batch-inpaint: executor ray (--executor)") < starting < started
    assert started < first_progress, said
    assert "batch-inpaint: Ray: dashboard at http://127.0.0.1:8265" in said[starting:started]
    monkeypatch.delenv("RAY_OVERRIDE_DASHBOARD_URL")
    again: list[str] = []
    run_job(JobConfig(output=str(tmp_path / "out2"), **settings), echo=again.append)
    assert not [s for s in again if "dashboard" in s], again  # ray_local has none: nothing said


def test_the_bar_drawn_after_start_up_counts_from_the_runs_start():
    # The bar is made when the first batch is in; its rate and elapsed time still count the
    # start-up, as the plain line and the summary's rows/s do (issue 25, item 10).
    from batch_inpaint.job.report.progress import Progress

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        p = Progress(12, 0.0, stream=tty, started=time.time() - 4.0)
        assert p.bar is not None
        p.update(12, 0)
        p.close()
        tty.flush()
        drawn = b""
        while select.select([master], [], [], 0.3)[0]:
            drawn += os.read(master, 65536)
    os.close(master)
    final = drawn.decode().replace("\r", "\n").strip().splitlines()[-1]
    rate = float(re.search(r"([\d.]+)row/s", final)[1])
    assert "12/12 [00:04<00:00" in final and 2.5 < rate < 3.1, final
