"""Work that kills its worker, bounded. A model, detect or verify actor killed mid-batch (the
host's OOM killer, Ray's memory monitor, a GPU fault, a native crash) takes the batch with it, and
Ray retries the batch on a new actor: without a count, a row that always kills its actor loops
for ever in silence, or fails the whole run once Ray's retries run out.

Each of those stages records each start of its work in a small object under the output,
`metadata/_attempt-[<stage>-]<batch|row>-<hash of the ids>.json` (readers skip `_` names), and
removes it when the work returns (`counted`). An object still there at the next start means the
worker died on it:

- a batch started for the BATCH_TRIES + 1-th time runs row by row;
- a row started alone for the ROW_TRIES + 1-th time is not run again: it becomes an error row of
  kind `out_of_memory` (transient: the next run redoes it), and the other rows finish.

The driver watches these objects while the rows stream (`watch`) and says on the terminal when an
actor died and a batch or row is retried; they are all removed at the start and end of a run.
Storage-backed, so it holds across nodes and actor restarts without Ray in this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator

from batch_inpaint.errors import ModelError, NotFoundError, TransientStorageError
from batch_inpaint.job.io.output_folder import METADATA
from batch_inpaint.storage.uri import join
from batch_inpaint.vocab import ErrorKind

BATCH_TRIES = 2  # whole-batch attempts whose actor died before the batch goes row by row
ROW_TRIES = 2  # deaths on a row alone before it becomes an out_of_memory error row
PREFIX = "_attempt-"


def task_retries(rows_per_block: int) -> int:
    """Ray's max_task_retries for a model task over a block: enough for every batch of the block to
    go row by row and every row to exhaust its tries, plus a few node losses; a bound, not a loop."""
    return BATCH_TRIES + ROW_TRIES * rows_per_block + 3


def _key(what: str, ids: list[str]) -> str:
    h = hashlib.sha256("\0".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{PREFIX}{what}-{h}.json"


class Attempts:
    """Start/done records of one stage's work ("model", "detect" or "verify") under
    `{output}/metadata/`."""

    def __init__(self, storage, output: str, stage: str = "model"):
        self.storage, self.output, self.stage = storage, output, stage

    def _uri(self, name: str) -> str:
        return join(self.output, METADATA, name)

    def _name(self, what: str, ids: list[str]) -> str:
        return _key(what if self.stage == "model" else f"{self.stage}-{what}", ids)

    def start(self, what: str, ids: list[str]) -> int:
        """Record that work on `ids` starts; returns which start this is (1 = the first)."""
        uri = self._uri(self._name(what, ids))
        try:
            before = json.loads(self.storage.read_bytes(uri))["attempt"]
        except NotFoundError:
            before = 0
        except TransientStorageError:  # storage down or full: the work goes on uncounted
            return 1
        body = {"what": what, "stage": self.stage, "attempt": before + 1, "rows": len(ids),
                "ids": ids[:1] + ids[-1:]}  # fmt: skip
        # A record is bookkeeping: if it can't be written (a full disk, a 503 storm past the
        # retries), the work runs uncounted and its rows meet the same storage when they write
        # their images (storage_transient error rows), instead of failing the whole run.
        with contextlib.suppress(TransientStorageError):
            self.storage.write_bytes(uri, json.dumps(body).encode(), root=self.output)
        return before + 1

    def done(self, what: str, ids: list[str]) -> None:
        with contextlib.suppress(TransientStorageError):  # cleared again at the run's end
            self.storage.delete(self._uri(self._name(what, ids)), root=self.output)

    def records(self) -> dict[str, dict]:
        """Every record present: name -> its body (a record removed meanwhile is left out)."""
        try:
            uris = self.storage.list(join(self.output, METADATA), suffixes=(".json",))
        except NotFoundError:
            return {}
        out = {}
        for uri in uris:
            name = uri.rsplit("/", 1)[-1]
            if name.startswith(PREFIX):
                with contextlib.suppress(NotFoundError, ValueError, KeyError):
                    out[name] = json.loads(self.storage.read_bytes(uri))
        return out

    def clear(self) -> None:
        for name in self.records():
            self.storage.delete(self._uri(name), root=self.output)


def counted(
    attempts: Attempts | None,
    ids: list[str],
    whole: Callable[[], object],
    alone: Callable[[int], object],
    given: Callable[[int], object],
) -> None:
    """Run a batch of rows with its starts recorded: `whole()` while the batch has killed its
    worker fewer than BATCH_TRIES times; then `alone(k)` for each row k, except a row that killed
    it ROW_TRIES times alone: `given(k)` records it given up (its record stays, so it stays
    given up for the rest of the run)."""
    if attempts is None:
        whole()
        return
    if attempts.start("batch", ids) <= BATCH_TRIES:
        whole()
    else:
        for k, rid in enumerate(ids):
            if attempts.start("row", [rid]) > ROW_TRIES:
                given(k)
                continue
            alone(k)
            attempts.done("row", [rid])
    attempts.done("batch", ids)


def counted_table(attempts: Attempts | None, table, run: Callable, stage: str):
    """`counted` over a table of rows with ids: `run(table, None)` does the stage's work on
    rows, `run(table, exc)` records exc on the rows it would have worked on, without working."""
    import pyarrow as pa

    ids = [str(v) for v in table.column("id").to_pylist()]
    parts: dict[int, object] = {}
    counted(
        attempts, ids,
        lambda: parts.__setitem__(-1, run(table, None)),
        lambda k: parts.__setitem__(k, run(table.slice(k, 1), None)),
        lambda k: parts.__setitem__(k, run(table.slice(k, 1), given_up(ids[k], stage))),
    )  # fmt: skip
    return parts[-1] if -1 in parts else pa.concat_tables([parts[k] for k in range(len(ids))])


ADVICE = {  # what to change when a row keeps killing a stage's worker
    "model": "give the model more memory or this row a smaller working size (max_side, crop mode)",
    "detect": "give the detect actors more memory (--cpus-per-detect-actor, fewer per node) or "
    "lower max_pixels",
    "verify": "give the detect actors more memory (verify runs the same detector) or lower "
    "max_pixels",
}
WORKER = {"model": "the model's worker", "detect": "the detector's worker",
          "verify": "the verifier's worker"}  # fmt: skip


def given_up(row_id: str, stage: str = "model") -> ModelError:
    return ModelError(
        f"{WORKER[stage]} died {ROW_TRIES} times working on this row alone (out of memory? "
        "the host's OOM killer or Ray's memory monitor): not tried again in this run; the next "
        f"run redoes it. If it keeps failing, {ADVICE[stage]}",
        kind=ErrorKind.OUT_OF_MEMORY.value,
    )


def retry_note(body: dict) -> str | None:
    """The terminal's line for a record at its 2nd or later start; None for a first start."""
    k = body.get("attempt", 1)
    if k < 2:
        return None
    ids = body.get("ids") or ["?"]
    stage = body.get("stage", "model")
    if body.get("what") == "row":
        tail = ("given up: an out_of_memory error row" if k > ROW_TRIES
                else f"retried alone, {k}/{ROW_TRIES + 1}")  # fmt: skip
        return f"{stage} actor died (out of memory?) on row {ids[0]!r}; {tail}"
    span = ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    if k <= BATCH_TRIES:
        how = f"batch retried, {k}/{BATCH_TRIES + 1}"
    elif k == BATCH_TRIES + 1:
        how = f"batch retried row by row, {k}/{BATCH_TRIES + 1}"
    else:  # row by row again: each row that kills the actor gets ROW_TRIES of its own
        how = f"batch retried row by row again (start {k}; a row is given up after {ROW_TRIES})"
    return (
        f"{stage} actor died (out of memory?) on a batch of {body.get('rows')} rows ({span}); {how}"
    )


@contextlib.contextmanager
def watch(storage, output: str, echo: Callable[[str], object], every_s: float = 2.0) -> Iterator:
    """While the rows stream: clear old records, then say each retry as it happens (a thread
    polling the records); at the end, clear them so the next run starts counting afresh."""
    attempts = Attempts(storage, output)
    with contextlib.suppress(TransientStorageError):  # old records only slow a retry count
        attempts.clear()
    stop = threading.Event()
    said: set[tuple[str, int]] = set()

    def look() -> None:
        with contextlib.suppress(Exception):  # a failed look must not stop the run
            for name, body in attempts.records().items():
                note = retry_note(body)
                if note and (name, body["attempt"]) not in said:
                    said.add((name, body["attempt"]))
                    echo(f"batch-inpaint: {note}")

    def poll() -> None:
        while not stop.wait(every_s):
            look()

    thread = threading.Thread(target=poll, name="attempts-watch", daemon=True)
    thread.start()
    try:
        yield attempts
    finally:
        stop.set()
        thread.join(timeout=every_s + 30)
        look()  # a row given up since the last look
        with contextlib.suppress(Exception):
            attempts.clear()
