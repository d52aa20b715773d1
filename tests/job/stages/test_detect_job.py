"""Detection as a stage of the job: rows without masks get theirs from a detector, rows with both
use the union, rows where nothing is found are skipped with a note, unreadable images are error
rows; every row is recorded once with its `detections` and the mask the job used (saved under
masks/), and the pixels outside that mask are the input's, bit for bit.

Known boxes come from a BoxesDetector given through `provider_factory` (the detector is not what
is under test here; tests/detect covers the real ones). One CLI run uses the tiny random Grounding
DINO checkpoint with threshold 0: with random weights what it finds is random, so that test checks
only that every row ends once, with its detections recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_inpaint.config import JobConfig
from batch_inpaint.detect.base import BoxesDetector, Detection, image_digest
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.job.stages.detect import DetectStage
from batch_inpaint.job.stages.finish import finish_batch
from batch_inpaint.job.stages.model import ModelStage
from batch_inpaint.job.stages.prepare import prepare_batch
from batch_inpaint.models.opencv_backend import OpenCVInpainter
from batch_inpaint.storage.uri import output_key
from batch_inpaint.vocab import ErrorKind
from tests.fixtures_ray import box_mask, manifest_bytes, png, sample_image
from tests.fixtures_s3 import s3_client
from tests.job.helpers import context, table_of

W, H = 64, 48
FOUND = (10.0, 8.0, 30.0, 28.0)  # where the "watermark" is in every image
OWN = (40, 10, 60, 30)  # the user's own mask of the `union` row


def boxes_provider(ctx) -> MaskProvider:
    """Module level, so Ray can ship it to the detect actors."""
    return MaskProvider(BoxesDetector([Detection("watermark", 0.9, FOUND)]))


class FailsOnOne(BoxesDetector):
    """Known boxes, except that a batch holding one given image fails (as a detector failing on
    one input would), so the stage's isolation is what saves the others."""

    def __init__(self, bad: np.ndarray):
        super().__init__([Detection("watermark", 0.9, FOUND)])
        self.bad = image_digest(bad)

    def _detect(self, images, queries, threshold, max_detections):
        if any(image_digest(im) == self.bad for im in images):
            raise RuntimeError(f"detector blew up on a batch of {len(images)}")
        return super()._detect(images, queries, threshold, max_detections)


def _rows(put) -> list[dict]:
    """Rows (every kind) whose files `put(key, bytes)` stores; `detect` per row where it differs."""

    def row(rid, seed, **extra):
        return {"id": rid, "image": put(f"images/{rid}.png", png(sample_image(W, H, seed))),
                "caption": f"about {rid}", **extra}  # fmt: skip

    return [
        row("found-1", 1),
        row("found-2", 2),
        row("union", 3, mask=put("masks/union.png", png(box_mask(W, H, OWN)))),
        row("nothing", 4, detect="logo"),
        row("nothing-own-mask", 5, detect="logo", mask_boxes=[[40.0, 10.0, 60.0, 30.0]]),
        {"id": "unreadable", "image": "images/nope.png"},
    ]


EXPECTED = {  # id -> (status, error_kind)
    "found-1": ("ok", None),
    "found-2": ("ok", None),
    "union": ("ok", None),
    "nothing": ("skipped", None),
    "nothing-own-mask": ("ok", None),
    "unreadable": ("error", ErrorKind.NOT_FOUND.value),
}


def _local(root: Path) -> list[dict]:
    def put(key: str, data: bytes) -> str:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
        return key

    rows = _rows(put)
    (root / "manifest.parquet").write_bytes(manifest_bytes(rows))
    return rows


def _config(**kw) -> JobConfig:
    # CPU shares unset: the test instance's 2 CPUs are a laptop's, and the job must fit them
    base = dict(backend="opencv", device="cpu", detect=["watermark"], dilate=2, feather=2,
                flush_rows=4, progress_interval_s=0.0, detect_batch_size=2)  # fmt: skip
    return JobConfig(**{**base, **kw})


def _check(meta: dict, read, src_of) -> None:
    """Every row as EXPECTED; outside the recorded mask the output is the input, bit for bit."""
    assert {k: (r["status"], r["error_kind"]) for k, r in meta.items()} == EXPECTED
    for rid in ("found-1", "found-2", "union", "nothing-own-mask"):
        r = meta[rid]
        assert r["mask_used"] == "masks/" + output_key(rid, ".png"), rid
        mask = np.asarray(Image.open(read(r["mask_used"])).convert("L")) > 127
        src = src_of(rid)
        got = np.asarray(Image.open(read(r["output"])).convert("RGB"))
        assert (got == src).all(axis=-1)[~mask].all(), rid
        assert not (got == src).all(axis=-1)[mask].all(), rid
        x0, y0, x1, y1 = (int(v) for v in FOUND)
        if rid != "nothing-own-mask":
            assert mask[y0:y1, x0:x1].all(), rid
            assert r["detections"] == [{"label": "watermark", "score": 0.9, "box": list(FOUND)}]
        if rid in ("union", "nothing-own-mask"):  # the user's own mask is in it too
            assert mask[OWN[1] : OWN[3], OWN[0] : OWN[2]].all(), rid
    own = meta["nothing-own-mask"]
    assert own["detections"] == [] and "nothing found for logo" in own["note"]
    assert "own mask" in own["note"]
    skipped = meta["nothing"]
    assert skipped["detections"] == [] and skipped["mask_used"] is None
    assert skipped["note"] == "nothing found for logo (threshold each detector's default)"
    assert (
        np.asarray(Image.open(read(skipped["output"])).convert("RGB")) == src_of("nothing")
    ).all()
    bad = meta["unreadable"]
    assert "'unreadable'" in bad["error"] and "images/nope.png" in bad["error"]
    assert bad["output"] is None and bad["detections"] is None


# ------------------------------------------------------------------------------------------------
# in process, no Ray
def _stages(ctx, table: pa.Table, provider_factory) -> pa.Table:
    """detect -> prepare -> model (OpenCV) -> finish, as the job runs them."""
    detected = DetectStage(ctx, provider_factory=provider_factory)(table)
    model = ModelStage(ctx, inpainter_factory=lambda c: OpenCVInpainter())
    return finish_batch(model(prepare_batch(detected, ctx)), ctx)


def _by_id(table: pa.Table) -> dict:
    return {r["id"]: r for r in table.to_pylist()}


def test_stages_in_process_detect_then_inpaint(tmp_path):
    rows = _local(tmp_path)
    ctx = context(tmp_path, detect=["watermark"], dilate=2, feather=2)
    out = _stages(ctx, pq.read_table(tmp_path / "manifest.parquet"), boxes_provider)
    meta = {r["id"]: r for r in out.to_pylist()}
    assert [r["id"] for r in rows] == list(meta)
    assert meta["union"]["caption"] == "about union"  # pass-through columns survive

    order = [r["id"] for r in rows]
    _check(meta, lambda rel: tmp_path / "out" / rel,
           lambda rid: sample_image(W, H, order.index(rid) + 1))  # fmt: skip


def test_detector_failure_is_an_error_row_of_its_own_kind(tmp_path):
    _local(tmp_path)
    ctx = context(tmp_path, detect=["watermark"])
    bad = sample_image(W, H, 2)
    table = pq.read_table(tmp_path / "manifest.parquet")
    out = _by_id(_stages(ctx, table, lambda c: MaskProvider(FailsOnOne(bad))))
    assert out["found-2"]["status"] == "error" and out["found-2"]["error_kind"] == "detect"
    assert "'found-2'" in out["found-2"]["error"] and "blew up" in out["found-2"]["error"]
    assert out["found-1"]["status"] == "ok" and out["union"]["status"] == "ok"  # alone
    # the report shows its input and says why there is no mask (not "give mask, mask_boxes")
    from batch_inpaint.job.report.pictures import error_pictures

    pictures, why = error_pictures(out["found-2"], ctx.storage, ctx.config)
    assert [alt for alt, _ in pictures] == ["input"]
    assert why == "no mask picture: the row has no mask of its own and none was made"


def test_rows_without_queries_pass_through_unchanged(tmp_path):
    """In a job with per-row queries only, rows without any keep today's behaviour."""
    _local(tmp_path)
    ctx = context(tmp_path)  # no job queries: only the rows' `detect` column
    table = pq.read_table(tmp_path / "manifest.parquet")
    out = {r["id"]: r for r in DetectStage(ctx, provider_factory=boxes_provider)(table).to_pylist()}
    assert out["union"]["_bi_detections"] is None and out["union"]["_bi_status"] == "pending"
    assert out["nothing"]["_bi_detections"] == [] and out["nothing"]["_bi_note"]
    prepared = {r["id"]: r for r in prepare_batch(
        DetectStage(ctx, provider_factory=boxes_provider)(table), ctx).to_pylist()}  # fmt: skip
    assert prepared["found-1"]["_bi_error_kind"] == ErrorKind.NO_MASK.value
    assert (
        prepared["union"]["_bi_status"] == "pending" and prepared["union"]["_bi_mask_used"] is None
    )


# ------------------------------------------------------------------------------------------------
# real local Ray
@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "local"])  # both executors (job/executors/)
def test_local_job_detects_inpaints_and_resumes(executor, ray_local, tmp_path):
    from batch_inpaint.job.run import run_job

    src = tmp_path / "in"
    rows = _local(src)
    out = tmp_path / "out"
    cfg = _config(manifest=str(src / "manifest.parquet"), output=str(out), executor=executor)
    summary = run_job(cfg, echo=lambda *_: None, provider_factory=boxes_provider)
    assert summary["success"], summary["problems"]
    meta = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    assert len(pq.read_table(out / "metadata")) == len(rows)  # every row exactly once
    order = [r["id"] for r in rows]
    _check(meta, lambda rel: out / rel, lambda rid: sample_image(W, H, order.index(rid) + 1))
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        output_key(r, ".png") for r in ("found-1", "found-2", "union", "nothing-own-mask")
    )
    assert all(meta[r]["detect_s"] > 0 for r in ("found-1", "found-2", "union", "nothing"))
    assert meta["found-1"]["verify_s"] is None  # not verified in this job
    page = (out / "report.html").read_text()
    assert "detect (fetch, decode, detect)" in page and "verify (read" not in page
    assert "thumbnail unavailable" not in page and page.count('alt="output"') >= 5
    again = run_job(cfg, echo=lambda *_: None, provider_factory=boxes_provider)
    assert again["rows_this_run"] == 0 and again["success"]
    assert again["unknown_objects_kept"] == 0
    assert {r["id"]: r["finished_at"] for r in pq.read_table(out / "metadata").to_pylist()} == {
        k: r["finished_at"] for k, r in meta.items()}  # fmt: skip
    # --prune: a row no longer in the manifest loses its image and its mask (the job's files)
    gone = out / meta["found-2"]["mask_used"]
    assert gone.is_file()
    (src / "manifest.parquet").write_bytes(
        manifest_bytes([r for r in rows if r["id"] != "found-2"])
    )
    pruned = run_job(JobConfig.from_dict({**cfg.to_dict(), "prune": True}), echo=lambda *_: None)
    assert pruned["rows_pruned"] == 1 and pruned["success"]
    assert not gone.exists() and not (out / meta["found-2"]["output"]).exists()
    assert (out / meta["found-1"]["mask_used"]).is_file()


@pytest.mark.slow
def test_s3_job_detects_and_records_the_masks(ray_local, s3_server, s3_bucket):
    from batch_inpaint.job.run import run_job
    from batch_inpaint.storage.store import Storage

    client = s3_client(s3_server)
    base = f"s3://{s3_bucket}/in"

    def put(key: str, data: bytes) -> str:
        client.put_object(Bucket=s3_bucket, Key=f"in/{key}", Body=data)
        return key

    rows = _rows(put)
    put("manifest.parquet", manifest_bytes(rows))
    out = f"s3://{s3_bucket}/out"
    # split stages (as beside a GPU model): detect actors -> prepare tasks -> model actors
    cfg = _config(manifest=f"{base}/manifest.parquet", output=out, endpoint_url=s3_server,
                  fuse_stages=False, cpus_per_actor=0.5, cpus_per_task=0.5,
                  cpus_per_detect_actor=0.5)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None, provider_factory=boxes_provider)
    assert summary["success"], summary["problems"]
    storage = Storage(cfg.storage_options())
    table = pq.read_table(pa.BufferReader(storage.read_bytes(
        storage.list(f"{out}/metadata")[0])))  # fmt: skip
    meta = {r["id"]: r for r in table.to_pylist()}
    order = [r["id"] for r in rows]

    def read(rel):
        import io

        return io.BytesIO(storage.read_bytes(f"{out}/{rel}"))

    _check(meta, read, lambda rid: sample_image(W, H, order.index(rid) + 1))


@pytest.fixture(scope="module")
def tiny_detector_dir(tmp_path_factory) -> str:
    from batch_inpaint.cli import main

    path = tmp_path_factory.mktemp("tiny-detector") / "detector"
    assert main(["make-tiny-model", "--kind", "detector", str(path)]) == 0
    return str(path)


@pytest.mark.slow
def test_cli_run_with_the_tiny_grounding_dino(ray_local, tmp_path, tiny_detector_dir, capsys):
    from batch_inpaint.cli import main

    src = tmp_path / "in"
    rows = [r for r in _local(src) if r["id"] in ("found-1", "union", "nothing-own-mask")]
    (src / "manifest.parquet").write_bytes(manifest_bytes(
        [{k: v for k, v in r.items() if k != "detect"} for r in rows]))  # fmt: skip
    out = tmp_path / "out"
    rc = main(["run", "--manifest", str(src / "manifest.parquet"), "--output", str(out),
               "--backend", "opencv", "--detect", "watermark",
               "--detector", tiny_detector_dir, "--detect-threshold", "0.0",
               "--cpus-per-actor", "0.5", "--cpus-per-task", "0.5",
               "--cpus-per-detect-actor", "0.5"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    table = pq.read_table(out / "metadata")
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    for r in table.to_pylist():
        assert r["status"] in ("ok", "skipped"), r
        assert r["detections"] is not None, r
        assert (r["mask_used"] is not None) == (r["status"] == "ok"), r


def test_rows_a_detect_manifest_already_detected_are_not_detected_again(tmp_path):
    """`batch-inpaint detect` writes `detections`: `run` takes its manifest as it is."""
    from batch_inpaint.detect.base import detections_arrow_type
    from batch_inpaint.job.stages.detect import job_queries
    from batch_inpaint.storage.store import Storage

    rows = _local(tmp_path)[:2]
    found = [{"label": "logo", "score": 0.5, "box": [1.0, 2.0, 3.0, 4.0]}]
    table = table_of([{**r, "detect": "watermark", "mask_boxes": [[1.0, 2.0, 3.0, 4.0]]}
                      for r in rows])  # fmt: skip
    table = table.append_column("detections", pa.array([found, None], detections_arrow_type()))
    pq.write_table(table, tmp_path / "manifest.parquet")
    ctx = context(tmp_path)
    storage = Storage(ctx.config.storage_options())
    assert job_queries(storage, ctx.config) == ["watermark"]  # the second row still needs it
    pq.write_table(table.slice(0, 1), tmp_path / "manifest.parquet")
    assert job_queries(storage, ctx.config) == []  # nothing left to detect: no detect stage
    meta = _by_id(_stages(ctx, table, boxes_provider))
    assert meta["found-1"]["detections"] == found and meta["found-1"]["mask_used"] is None
    assert meta["found-2"]["detections"][0]["label"] == "watermark"
    assert meta["found-2"]["mask_used"] is not None
