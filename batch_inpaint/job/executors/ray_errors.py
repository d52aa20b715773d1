"""What a failure inside Ray looks like on the driver's terminal: one line, not pages.

- Ray prints every failed task and actor start it retries, with its whole traceback, as
  "(raylet) ..." lines on the driver's stdout (its error listener). Unless --verbose, those go to
  a file in Ray's log folder instead; the run says where.
- A job error raised in a worker (e.g. a model that can't be loaded: a bad weights file, a folder
  that isn't a model) reaches the driver wrapped in Ray's exceptions. `job_error` finds it again,
  so the command prints the job's own message and exits with its status, never a traceback."""

from __future__ import annotations

import importlib
import re

from batch_inpaint.errors import InpaintError

_RAISED = re.compile(r"(?P<mod>batch_inpaint(?:\.\w+)*)\.(?P<cls>\w+): (?P<msg>[^\n]+)")


def raylet_lines_to(path: str) -> None:
    """Send Ray's "(raylet)" lines (retries, actor deaths, each with its traceback) to `path`."""
    import ray._private.worker as worker

    original = worker.print_to_stdstream
    if getattr(original, "batch_inpaint_quiet", False):
        original = original.__wrapped__

    def quiet(data, ignore_prefix=False):
        if isinstance(data, dict) and data.get("pid") == "raylet":
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n".join(str(x) for x in data.get("lines", [])) + "\n")
            return
        original(data, ignore_prefix=ignore_prefix)

    quiet.batch_inpaint_quiet = True  # type: ignore[attr-defined]
    quiet.__wrapped__ = original  # type: ignore[attr-defined]
    worker.print_to_stdstream = quiet


def job_error(exc: BaseException) -> InpaintError | None:
    """The job's own error inside a Ray exception (its cause chain, or the text of a remote
    traceback when Ray kept only that), or None when it holds none."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        err = todo.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, InpaintError):
            return err
        todo += [getattr(err, "cause", None), err.__cause__, err.__context__]
    found = _RAISED.findall(str(exc))
    if not found:
        return None
    module, name, message = found[-1]
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, InpaintError)):
        cls = InpaintError
    return cls(message)
