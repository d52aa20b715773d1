"""The start-up line: what the driver says while an executor starts, until the first result batch.

Starting Ray and loading the model in every actor takes seconds to minutes, and until now the
terminal said nothing. On a terminal one line is redrawn in place every second with the elapsed
time ("batch-inpaint: starting Ray and the model actors... 12 s") and, once the first batch
arrives, replaced by "batch-inpaint: Ray and the model actors started in 14 s". In a log (echo is not the terminal's print, or
--verbose, where Ray writes lines of its own) it is a few lines: one at the start, one after
30 s, 60 s, 120 s ... (each interval twice the last), and the final one."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable

from batch_inpaint.job.report.progress import _is_builtin_print, _is_tty

LOG_FIRST_S = 30.0  # in a log, the first "still starting" line; then every doubled interval


class Startup:
    """`what`: e.g. "Ray and the model actors". `with Startup(what, echo):` around the wait for
    the first batch; `.echo` prints a line of the driver's own while the line is drawn (clears
    it, prints, draws it again). `in_place=False`: the log's few lines even on a terminal."""

    def __init__(self, what: str, echo: Callable[[str], object] = print, *, stream=None,
                 in_place: bool = True, tick_s: float = 1.0, log_first_s: float = LOG_FIRST_S):  # fmt: skip
        self.what, self.plain_echo, self.tick_s, self.log_first_s = what, echo, tick_s, log_first_s
        self.stream = stream if stream is not None else sys.stdout
        self.tty = in_place and _is_builtin_print(echo) and _is_tty(self.stream)
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drawn = False
        self._thread: threading.Thread | None = None

    def start(self) -> Startup:
        self.t0 = time.monotonic()
        if self.tty:
            self._draw()
        else:
            self.plain_echo(f"batch-inpaint: starting {self.what}...")
        self._thread = threading.Thread(target=self._tick, name="batch-inpaint-startup",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def echo(self, message: str) -> None:
        """The driver's own lines while starting: above the drawn line, never through it."""
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
            self.plain_echo(message)
            if self._drawn and not self._stop.is_set():
                self._draw_locked()

    def close(self, started: bool = True) -> None:
        """Stop the line; `started`: the first batch arrived (say how long it took), else the
        start failed and its error follows (the line is only cleared)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False
            if started:
                self.plain_echo(f"batch-inpaint: {self.what} started in {self.elapsed():.0f} s")

    def __enter__(self) -> Startup:
        return self if self._thread is not None else self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.close(started=exc_type is None)

    def line(self) -> str:
        return f"batch-inpaint: starting {self.what}... {self.elapsed():.0f} s"

    def _draw(self) -> None:
        with self._lock:
            self._draw_locked()

    def _draw_locked(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r" + self.line()[: max(width - 1, 10)] + "\033[K")
        self.stream.flush()
        self._drawn = True

    def _tick(self) -> None:
        if self.tty:
            while not self._stop.wait(self.tick_s):
                self._draw()
            return
        wait = self.log_first_s
        while not self._stop.wait(max(self.t0 + wait - time.monotonic(), 0.0)):
            with self._lock:
                if not self._stop.is_set():
                    self.plain_echo(
                        f"batch-inpaint: still starting {self.what}... {self.elapsed():.0f} s"
                    )
            wait *= 2
