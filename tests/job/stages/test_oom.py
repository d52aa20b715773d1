"""Out of memory as a row's problem, without Ray: a CUDA OOM that splitting can't fix ends as the
transient kind `out_of_memory` (not `model`); a batch whose model worker died (its start recorded
and never finished, as after an OOM kill) runs row by row on its third start, and a row that
killed the worker twice alone becomes an `out_of_memory` error row without running the model."""

from __future__ import annotations

from pathlib import Path

from batch_inpaint.job.stages import attempts
from batch_inpaint.job.stages import workitem as wi
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.vocab import ErrorKind
from tests.fixtures_ray import local_dataset
from tests.job.helpers import context, table_of


class OomOn(OpenCVInpainter):
    """OpenCV, except that a call holding `prompt` raises what torch raises on a CUDA OOM."""

    def __init__(self, prompt: str):
        super().__init__()
        self.prompt = prompt
        self.calls: list[int] = []  # batch sizes, in call order

    def inpaint(self, images, masks, params, prompts, negative_prompts, seeds):
        self.calls.append(len(images))
        if self.prompt in prompts:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB "
                               "total capacity; 14.1 GiB already allocated)")  # fmt: skip
        return super().inpaint(images, masks, params, prompts, negative_prompts, seeds)


def _rows(root: Path, n: int, bad: int | None = None) -> list[dict]:
    _, rows = local_dataset(root, n)
    if bad is not None:
        rows[bad]["prompt"] = "too big"
    return rows


def _through(ctx, rows, inpainter) -> dict[str, dict]:
    out = finish_batch(
        ModelStage(ctx, inpainter=inpainter)(prepare_batch(table_of(rows), ctx)), ctx
    )
    return {r["id"]: r for r in out.to_pylist()}


def test_cuda_oom_alone_is_an_out_of_memory_row_and_the_others_finish(tmp_path):
    rows = _rows(tmp_path, 4, bad=2)
    model = OomOn("too big")
    got = _through(context(tmp_path, batch_size=4), rows, model)
    assert model.calls[0] == 4 and 1 in model.calls  # the batch was split down to the row
    bad = got["r002"]
    assert (bad["status"], bad["error_kind"]) == ("error", ErrorKind.OUT_OF_MEMORY.value)
    assert ErrorKind.OUT_OF_MEMORY.transient
    assert "out of memory on this image alone" in bad["error"] and "r002" in bad["error"]
    assert {r["status"] for i, r in got.items() if i != "r002"} == {"ok"}


def test_a_batch_whose_worker_died_twice_goes_row_by_row(tmp_path):
    rows = _rows(tmp_path, 4)
    ctx = context(tmp_path, batch_size=4)
    ids = [r["id"] for r in rows]
    rec = attempts.Attempts(ctx.storage, ctx.config.output)
    for _ in range(attempts.BATCH_TRIES):  # two starts that never finished: the worker died
        rec.start("batch", ids)
    model = OomOn("never")
    got = _through(ctx, rows, model)
    assert model.calls == [1, 1, 1, 1], "the third start must run the rows one by one"
    assert {r["status"] for r in got.values()} == {"ok"}
    assert rec.records() == {}, "finished work leaves no record"


def test_a_row_that_killed_its_worker_twice_alone_becomes_an_error_row(tmp_path):
    rows = _rows(tmp_path, 4)
    ctx = context(tmp_path, batch_size=4)
    ids = [r["id"] for r in rows]
    rec = attempts.Attempts(ctx.storage, ctx.config.output)
    for _ in range(attempts.BATCH_TRIES + attempts.ROW_TRIES):
        rec.start("batch", ids)
    for _ in range(attempts.ROW_TRIES):
        rec.start("row", ["r001"])
    model = OomOn("never")
    got = _through(ctx, rows, model)
    assert model.calls == [1, 1, 1], "the given-up row must not reach the model again"
    bad = got["r001"]
    assert (bad["status"], bad["error_kind"]) == ("error", ErrorKind.OUT_OF_MEMORY.value)
    assert "died 2 times working on this row alone" in bad["error"]
    assert {r["status"] for i, r in got.items() if i != "r001"} == {"ok"}
    left = list(rec.records().values())
    assert [(b["what"], b["attempt"]) for b in left] == [("row", 3)]  # kept: given up this run
    assert attempts.retry_note(left[0]) == (
        "model actor died (out of memory?) on row 'r001'; given up: an out_of_memory error row"
    )


def test_retry_notes_and_watch_clears_records(tmp_path):
    note = attempts.retry_note({"what": "batch", "attempt": 2, "rows": 8, "ids": ["a", "h"]})
    assert note == ("model actor died (out of memory?) on a batch of 8 rows (a..h); batch "
                    "retried, 2/3")  # fmt: skip
    assert attempts.retry_note({"what": "batch", "attempt": 1, "rows": 8, "ids": ["a"]}) is None
    ctx = context(tmp_path)
    said: list[str] = []
    with attempts.watch(ctx.storage, ctx.config.output, said.append, every_s=0.05) as rec:
        rec.start("batch", ["x", "y"])
        rec.start("batch", ["x", "y"])
    assert said == ["batch-inpaint: model actor died (out of memory?) on a batch of 2 rows "
                    "(x..y); batch retried, 2/3"]  # fmt: skip
    assert rec.records() == {}
    assert attempts.task_retries(16) < 50  # Ray's retries are bounded


def test_planner_refuses_a_working_size_over_max_model_memory(tmp_path, tiny_model_dir):
    """The tiny checkpoint's estimate (models/memory.py) at a 640x480 full frame, fp32 on CPU,
    is ~8.7 GB: with a 2 GB limit the row is a too_large error naming the row and the size; a
    small image of the same job goes on to the model."""
    from batch_inpaint.job.stages.context import JobContext
    from batch_inpaint.models.memory import pass_memory_gb
    from batch_inpaint.models.spec import model_spec

    _, rows = local_dataset(tmp_path, 1, w=640, h=480)
    _, small = local_dataset(tmp_path / "s", 1, w=64, h=48)
    small[0]["id"], small[0]["image"], small[0]["mask"] = "small", "s/" + small[0]["image"], \
        "s/" + small[0]["mask"]  # fmt: skip
    base = context(tmp_path, backend="tiny", model=str(tiny_model_dir), device="cpu",
                   max_model_memory_gb=2, max_side=640)  # fmt: skip
    ctx = JobContext(base.config, base.storage, base.manifest_base,
                     model_spec("tiny", str(tiny_model_dir)))  # fmt: skip
    got = {r["id"]: r for r in prepare_batch(table_of(rows + small), ctx).to_pylist()}
    bad = got["r000"]
    assert (bad[wi.STATUS], bad[wi.ERROR_KIND]) == ("error", ErrorKind.TOO_LARGE.value), bad
    assert "'r000'" in bad[wi.ERROR] and "working size 640x480" in bad[wi.ERROR], bad[wi.ERROR]
    assert "max_model_memory_gb 2" in bad[wi.ERROR]
    assert got["small"][wi.STATUS] == "pending"
    assert pass_memory_gb("tiny", 640, 480, 1, 4) > 2 > pass_memory_gb("tiny", 64, 48, 1, 4)
    # SD2 figures: ~3.4 GB at 512² fp16, ~9.7 GB at 1920x1080 (the model card: fits in 16 GB)
    assert 3.0 < pass_memory_gb("diffusers", 512, 512, 1, 2) < 4.0
    assert 9.0 < pass_memory_gb("diffusers", 1920, 1080, 1, 2) < 11.0
    assert pass_memory_gb("opencv", 4000, 4000, 1, 4) is None  # no estimate: no check
