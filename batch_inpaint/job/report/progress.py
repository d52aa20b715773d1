"""The terminal while a run works: one progress display, and Ray's own output kept off it.

`Progress` is a tqdm bar (percentage, rows/s, ETA, errors) when the job prints to a terminal, else a
plain `progress:` line every `progress_interval_s` (logs, CI, `ray job submit`), plus one at the
end. `native_stderr_to` sends what C++ code writes to file descriptor 2 into a file: Ray's core
worker writes its ERROR lines there as well as to its own log file, and some of them are harmless
but read like failures."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Rows done out of `total` this run, with the error rows among them. `started`: the run's
    start (time.time(), RunState.started): the rate is then rows over the run's wall time, start-up
    included, the same figure as the summary's rows/s (results.summarize)."""

    def __init__(self, total: int, interval_s: float, echo: Callable[[str], object] = print,
                 stream=None, started: float | None = None):  # fmt: skip
        self.total, self.interval_s, self.echo = total, interval_s, echo
        self.done = self.errors = 0
        self.t_last = time.monotonic()
        self.t0 = self.t_last - (0.0 if started is None else max(0.0, time.time() - started))
        self.shown = -1  # rows at the last plain line
        stream = stream if stream is not None else sys.stdout
        self.bar = None
        if _is_builtin_print(echo) and total and _is_tty(stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="row", file=stream, dynamic_ncols=True,
                            smoothing=0.05, desc="batch-inpaint", postfix=_errors(0))  # fmt: skip
            if started is not None:  # the bar, made once the first batch is in: the run's clock
                self.bar.start_t = self.bar.last_print_t = min(started, self.bar.start_t)

    def update(self, rows: int, errors: int) -> None:
        self.done += rows
        self.errors += errors
        if self.bar is not None:
            self.bar.set_postfix_str(_errors(self.errors), refresh=False)
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self.t_last >= self.interval_s:
            self.t_last = now
            self._line(now)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.shown != self.done:
            self._line(time.monotonic())

    def line(self, now: float | None = None) -> str:
        if not self.total:  # a rerun with every row done: no rate to show
            return "progress: nothing to do: every row was finished by an earlier run"
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        return (f"progress: {self.done}/{self.total} rows ({pct:.0f}%), {rate:.2f} rows/s, "
                f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}, {_errors(self.errors)}")  # fmt: skip

    def _line(self, now: float) -> None:
        self.shown = self.done
        self.echo(self.line(now))


def _errors(n: int) -> str:
    return f"{n} error{'' if n == 1 else 's'}"


def _is_builtin_print(echo) -> bool:
    """The caller prints to the terminal (the default echo), not into a list or a log. Not `echo
    is print`: Ray's tqdm support replaces builtins.print once Ray Data has run in the process."""
    return (
        getattr(echo, "__module__", None) == "builtins" and getattr(echo, "__name__", "") == "print"
    )


def _is_tty(stream) -> bool:
    """A terminal that has a width (a bar drawn in 0 columns shows nothing)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def native_stderr_to(path: str | None) -> Iterator[None]:
    """While inside, file descriptor 2 goes to `path` (appended) and Python's sys.stderr keeps
    the terminal, so only native code's writes move. Does nothing when `path` is None or when
    sys.stderr is not descriptor 2 (e.g. under pytest's capture)."""
    try:
        active = path is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        active = False
    if not active:
        yield
        return
    old = sys.stderr
    old.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding=old.encoding,
                         errors=old.errors)  # fmt: skip
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = terminal
    try:
        yield
    finally:
        terminal.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old
        terminal.close()
