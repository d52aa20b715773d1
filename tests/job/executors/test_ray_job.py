"""The Ray Data job end to end on the session's local Ray instance: a manifest that mixes good
rows with every kind of bad one, on a real S3 endpoint (moto) with the tiny diffusers checkpoint
and on local folders with the OpenCV backend; the bundled examples through the CLI; resume."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_inpaint.config import JobConfig
from batch_inpaint.job.run import run_job
from tests.fixtures_ray import REPO, box_mask, manifest_bytes, png, sample_image
from tests.fixtures_s3 import DUMMY_KEY, DUMMY_SECRET, s3_client

pytestmark = pytest.mark.slow

DILATE, FEATHER = 2, 2


# ------------------------------------------------------------------------------------------------
# The mixed manifest: 12 rows, 3 ok, 1 skipped, 8 errors, each error of a different cause.
@dataclass
class Expected:
    status: str
    kind: str | None = None
    words: tuple[str, ...] = ()  # the cause, as the message must say it


@dataclass
class Mixed:
    rows: list[dict]
    expected: dict[str, Expected]  # result id -> outcome
    images: dict[str, np.ndarray] = field(default_factory=dict)  # id -> input pixels
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # id -> raw bool mask


def build_mixed(put, base: str) -> Mixed:
    """Write the inputs with `put(relative_key, bytes)` and return the manifest rows, whose URIs
    are relative to the manifest's folder except where `base` (the folder's URI) is needed to
    name an absolute object."""
    m = Mixed(rows=[], expected={})

    def image(rid, w, h, seed, mask_box=None, mask_size=None, **extra):
        arr = sample_image(w, h, seed)
        put(f"images/{rid}.png", png(arr))
        m.images[rid] = arr
        row = {"id": rid, "image": f"images/{rid}.png", **extra}
        if mask_box is not None:
            mw, mh = mask_size or (w, h)
            mask = box_mask(mw, mh, mask_box)
            put(f"masks/{rid}.png", png(mask))
            m.masks[rid] = mask > 0
            row["mask"] = f"masks/{rid}.png"
        m.rows.append(row)
        return row

    image("ok-file", 64, 48, 1, mask_box=(10, 8, 30, 28), caption="a cat", split="train")
    row = image("ok-boxes", 96, 64, 2, caption="a dog", split="val", prompt="a wall")
    row["mask_boxes"] = [[40.0, 10.0, 70.0, 40.0]]
    m.masks["ok-boxes"] = box_mask(96, 64, (40, 10, 70, 40)) > 0
    image(
        "ok-1step", 64, 64, 3, mask_box=(20, 20, 44, 44), num_inference_steps=1, split="train"
    )  # a valid per-row override: its own forward-pass group
    image("empty-mask", 64, 48, 4, mask_box=(0, 0, 0, 0), caption="nothing to do", split="test")
    m.expected.update(
        {
            "ok-file": Expected("ok"),
            "ok-boxes": Expected("ok"),
            "ok-1step": Expected("ok"),
            "empty-mask": Expected("skipped"),
        }
    )

    put("images/corrupt.png", b"\x89PNG\r\n\x1a\n this is not a PNG")
    put("masks/corrupt.png", png(box_mask(64, 48, (1, 1, 9, 9))))
    m.rows.append({"id": "corrupt", "image": "images/corrupt.png", "mask": "masks/corrupt.png"})
    m.expected["corrupt"] = Expected("error", "decode", ("not an image", "images/corrupt.png"))

    m.rows.append(
        {"id": "missing", "image": f"{base}/images/nope.png", "mask_boxes": [[1, 1, 5, 5]]}
    )
    m.expected["missing"] = Expected("error", "not_found", ("images/nope.png", "not found"))

    image("size-mismatch", 64, 48, 5, mask_box=(2, 2, 10, 10), mask_size=(32, 32))
    m.expected["size-mismatch"] = Expected("error", "size_mismatch", ("32x32", "64x48"))

    m.rows.append(
        {
            "id": "metadata-url",
            "image": "http://169.254.169.254/x.png",
            "mask_boxes": [[1, 1, 5, 5]],
        }
    )
    m.expected["metadata-url"] = Expected("error", "uri_rejected", ("169.254.169.254", "http"))

    image("no-mask", 64, 48, 6, caption="forgot the mask")
    m.expected["no-mask"] = Expected("error", "no_mask", ("no mask",))

    image("zero-steps", 64, 48, 7, mask_box=(5, 5, 20, 20), num_inference_steps=0)
    m.expected["zero-steps"] = Expected("error", "bad_value", ("num_inference_steps",))

    for seed in (8, 9):  # the same id twice: neither row is processed
        image("twice", 64, 48, seed, mask_box=(5, 5, 20, 20), caption=f"copy {seed}")
    m.images.pop("twice")
    m.expected["twice"] = Expected("error", "duplicate_id", ("appears 2 times",))
    m.expected["twice#2"] = Expected("error", "duplicate_id", ("appears 2 times",))
    return m


def mixed_local(root: Path) -> tuple[Path, Mixed]:
    """build_mixed's inputs in local folders under root/in, with their manifest."""
    src = root / "in"

    def put(key: str, data: bytes) -> None:
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)

    mixed = build_mixed(put, str(src))
    (src / "manifest.parquet").write_bytes(manifest_bytes(mixed.rows))
    return src / "manifest.parquet", mixed


def check_outputs(mixed: Mixed, meta: list[dict], read) -> None:
    """Every ok/skipped row's object decodes at the input's size and equals the input bit for bit
    outside the (dilated + feathered) mask; ok rows changed something inside it."""
    by_id = {r["id"]: r for r in meta}
    for rid, exp in mixed.expected.items():
        if exp.status == "error":
            assert by_id[rid]["output"] is None, rid
            continue
        data = read(by_id[rid]["output"])
        out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        src = mixed.images[rid]
        assert out.shape == src.shape, rid
        reach = _grow(mixed.masks[rid], DILATE + FEATHER + 1)
        same = (out == src).all(axis=-1)
        assert same[~reach].all(), f"{rid}: {int((~same[~reach]).sum())} unmasked pixels changed"
        if exp.status == "ok":
            assert not same[mixed.masks[rid]].all(), f"{rid}: nothing inpainted"
        else:
            assert same.all(), f"{rid}: a skipped row's output must be its input"


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation by r px: a superset of the round dilation + feather the job applies."""
    import cv2

    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def check_invariants(mixed: Mixed, meta: list[dict], summary: dict) -> None:
    ids = [r["id"] for r in meta]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    assert set(ids) == set(mixed.expected)
    counts = Counter(r["status"] for r in meta)
    assert sum(counts.values()) == len(mixed.rows)
    assert summary["counts"] == {"ok": 3, "error": 8, "skipped": 1}
    assert summary["success"] is True and summary["problems"] == []
    for r in meta:
        exp = mixed.expected[r["id"]]
        assert (r["status"], r["error_kind"]) == (exp.status, exp.kind), r["id"]
        if exp.status == "error":
            base_id = r["id"].split("#")[0]
            assert f"row {base_id!r}" in r["error"], r["error"]  # names the row ...
            for w in exp.words:  # ... and the cause
                assert w in r["error"], (r["id"], w, r["error"])
    kinds = Counter(e.kind for e in mixed.expected.values() if e.kind)
    assert summary["errors_by_kind"] == dict(kinds)


def check_pass_through(mixed: Mixed, meta: list[dict]) -> None:
    """Columns the job doesn't know travel to the result row, error rows included."""
    by_id = {r["id"]: r for r in meta}
    for row in mixed.rows:
        if row["id"] == "twice":
            continue
        got = by_id[row["id"]]
        for col in ("caption", "split", "image", "prompt"):
            assert got[col] == row.get(col), (row["id"], col)
    assert {by_id["twice"]["caption"], by_id["twice#2"]["caption"]} == {"copy 8", "copy 9"}


def config(**kw) -> JobConfig:
    base = dict(
        steps=2,
        dilate=DILATE,
        feather=FEATHER,
        device="cpu",
        flush_rows=4,
        progress_interval_s=0.0,
        seed=7,
        max_error_rate=1.0,  # the mixed manifest is mostly bad rows, on purpose
    )
    return JobConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# S3 (moto) + tiny diffusers checkpoint
@dataclass
class S3Run:
    mixed: Mixed
    cfg: JobConfig
    summary: dict
    client: object
    bucket: str
    echo: list[str]

    def read(self, uri: str) -> bytes:
        """An object by URI, or by a result row's `output` (relative to the output root)."""
        if not uri.startswith("s3://"):
            uri = f"s3://{self.bucket}/out/{uri}"
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        assert bucket == self.bucket
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    def meta(self) -> list[dict]:
        keys = [k for k in self.keys("out/metadata/") if k.endswith(".parquet")]
        tables = [pq.read_table(io.BytesIO(self.read(f"s3://{self.bucket}/{k}"))) for k in keys]
        return [r for t in tables for r in t.to_pylist()]


@pytest.fixture(scope="module")
def s3_run(ray_local, s3_server, tiny_model_dir):
    """One tiny-model job over the mixed manifest on S3; the tests below check its output."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # the endpoint comes from the config
        mp.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
        mp.setenv("AWS_REGION", "us-east-1")
        client = s3_client(s3_server)
        bucket = "job-e2e"
        client.create_bucket(Bucket=bucket)
        base = f"s3://{bucket}/in"

        def put(key: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=f"in/{key}", Body=data)

        mixed = build_mixed(put, base)
        put("manifest.parquet", manifest_bytes(mixed.rows))
        cfg = config(
            manifest=f"{base}/manifest.parquet",
            output=f"s3://{bucket}/out/",
            backend="tiny",
            model=str(tiny_model_dir),
            endpoint_url=s3_server,
        )
        echo: list[str] = []
        summary = run_job(cfg, echo=echo.append)
        yield S3Run(mixed, cfg, summary, client, bucket, echo)


def test_s3_every_manifest_row_has_exactly_one_result(s3_run):
    meta = s3_run.meta()
    check_invariants(s3_run.mixed, meta, s3_run.summary)
    assert len(s3_run.keys("out/metadata/")) == 1  # compacted to one file
    assert s3_run.keys("out/_SUCCESS") == ["out/_SUCCESS"]
    run = json.loads(s3_run.read(f"s3://{s3_run.bucket}/out/run.json"))
    assert run["counts"] == {"ok": 3, "error": 8, "skipped": 1}
    assert run["rows_this_run"] == 10  # the two duplicate rows are never processed
    assert "FINISHED WITH ERRORS - 3 ok, 8 error, 1 skipped" in "\n".join(s3_run.echo)


def test_s3_outputs_decode_and_keep_unmasked_pixels(s3_run):
    meta = s3_run.meta()
    check_outputs(s3_run.mixed, meta, s3_run.read)
    images = sorted(s3_run.keys("out/images/"))
    assert images == sorted(f"out/images/{i}.png" for i in ("ok-file", "ok-boxes", "ok-1step", "empty-mask"))  # fmt: skip
    by_id = {r["id"]: r for r in meta}
    import hashlib

    for rid in ("ok-file", "ok-boxes", "ok-1step", "empty-mask"):
        r = by_id[rid]
        assert hashlib.sha256(s3_run.read(r["output"])).hexdigest() == r["sha256"]
        assert (r["backend"], r["width"], r["height"]) == ("tiny", *s3_run.mixed.images[rid].shape[1::-1])  # fmt: skip
    params = {rid: json.loads(by_id[rid]["params"]) for rid in ("ok-file", "ok-boxes", "ok-1step")}
    assert params["ok-file"]["num_inference_steps"] == 2
    assert params["ok-1step"]["num_inference_steps"] == 1  # the row's override won
    assert params["ok-boxes"]["prompt"] == "a wall"


def test_s3_pass_through_columns(s3_run):
    check_pass_through(s3_run.mixed, s3_run.meta())


def test_s3_no_secret_anywhere_under_the_output(s3_run):
    keys = s3_run.keys("out/")
    assert {"out/job.json", "out/run.json", "out/report.html", "out/_SUCCESS"} <= set(keys)
    for key in keys:
        data = s3_run.read(f"s3://{s3_run.bucket}/{key}")
        for secret in (DUMMY_KEY, DUMMY_SECRET):
            assert secret.encode() not in data, f"{secret!r} leaked into {key}"
    job = json.loads(s3_run.read(f"s3://{s3_run.bucket}/out/job.json"))
    assert job["config"]["steps"] == 2 and job["config"]["backend"] == "tiny"
    assert not {"key", "secret", "token"} & set(job["storage"])
    assert job["versions"]["ray"] and job["versions"]["diffusers"]


def test_s3_report_lists_counts_and_errors(s3_run):
    page = s3_run.read(f"s3://{s3_run.bucket}/out/report.html").decode()
    assert "ok: 3" in page and "error: 8" in page and "skipped: 1" in page
    for rid in ("corrupt", "missing", "metadata-url", "twice#2"):
        assert f"<td>{rid}</td>" in page
    assert page.count('alt="output"') == 4  # ok + skipped rows get a thumbnail trio


def test_s3_second_run_processes_nothing(s3_run):
    before = {r["id"]: r for r in s3_run.meta()}
    echo: list[str] = []
    summary = run_job(s3_run.cfg, echo=echo.append)
    assert summary["rows_this_run"] == 0 and summary["success"]
    assert summary["counts"] == {"ok": 3, "error": 8, "skipped": 1}
    assert "0 to process" in echo[0]
    after = {r["id"]: r for r in s3_run.meta()}
    assert set(after) == set(before)
    for rid, r in before.items():
        if not rid.startswith("twice"):  # duplicate rows are re-recorded each run
            assert after[rid]["finished_at"] == r["finished_at"], rid


# ------------------------------------------------------------------------------------------------
# local folders + OpenCV
@pytest.fixture(scope="module", params=["ray", "local"])  # both executors (job/executors/)
def local_run(request, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("local-job")
    manifest, mixed = mixed_local(root)
    cfg = config(manifest=str(manifest), output=str(root / "out"), backend="opencv",
                 executor=request.param)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    return mixed, cfg, summary, root


def _local_meta(out: Path) -> list[dict]:
    return pq.read_table(out / "metadata").to_pylist()


def test_local_opencv_mixed_manifest(local_run):
    mixed, cfg, summary, root = local_run
    out = Path(cfg.output)
    meta = _local_meta(out)
    check_invariants(mixed, meta, summary)
    check_outputs(mixed, meta, lambda rel: (out / rel).read_bytes())
    check_pass_through(mixed, meta)
    assert (out / "_SUCCESS").is_file() and (out / "report.html").is_file()
    assert {r["backend"] for r in meta} == {"opencv"}  # duplicate-id rows name the model too
    assert json.loads((out / "run.json").read_text())["counts"] == summary["counts"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{i}.png" for i in ("ok-file", "ok-boxes", "ok-1step", "empty-mask")
    )


def test_retry_errors_redoes_only_error_rows(local_run, tmp_path):
    mixed, cfg, _, root = local_run
    out = tmp_path / "out"
    # A first run of its own (not a copy of the shared one: result rows record where their
    # objects are, and resume redoes a row whose object is not there).
    run_job(JobConfig.from_dict({**cfg.to_dict(), "output": str(out)}), echo=lambda *_: None)
    cfg = JobConfig.from_dict({**cfg.to_dict(), "output": str(out), "retry_errors": True})
    before = {r["id"]: r for r in _local_meta(out)}
    # The missing object appears: its row must now succeed.
    missing = Path(next(r["image"] for r in mixed.rows if r["id"] == "missing"))
    missing.write_bytes(png(sample_image(40, 30, 11)))
    try:
        summary = run_job(cfg, echo=lambda *_: None)
    finally:
        missing.unlink()
    redo = [
        i for i, e in mixed.expected.items() if e.status == "error" and e.kind != "duplicate_id"
    ]
    assert summary["rows_this_run"] == len(redo)
    after = {r["id"]: r for r in _local_meta(out)}
    assert len(after) == len(mixed.expected)
    for rid, r in before.items():
        if rid in redo or rid.startswith("twice"):
            assert after[rid]["finished_at"] > r["finished_at"], rid
        else:  # ok and skipped rows were not touched
            assert after[rid]["finished_at"] == r["finished_at"], rid
            assert after[rid]["sha256"] == r["sha256"], rid
    assert after["missing"]["status"] == "ok" and after["missing"]["error"] is None
    assert summary["counts"] == {"ok": 4, "error": 7, "skipped": 1}
    assert (out / "images" / "missing.png").is_file()


# ------------------------------------------------------------------------------------------------
# the bundled examples through the CLI, in process
def test_cli_run_on_the_bundled_examples(ray_local, tmp_path, capsys):
    from batch_inpaint.cli import main

    out = tmp_path / "examples-out"
    manifest = REPO / "examples" / "manifest.parquet"
    rc = main(["run", "--manifest", str(manifest), "--output", str(out), "--backend", "opencv",
               "--flush-rows", "3"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "SUCCESS - 8 ok, 0 error, 0 skipped" in printed
    rows = pq.read_table(manifest).to_pylist()
    meta = {r["id"]: r for r in _local_meta(out)}
    assert set(meta) == {r["id"] for r in rows}
    for row in rows:
        r = meta[row["id"]]
        assert r["status"] == "ok" and r["licence"] == row["licence"]  # pass-through
        src = np.asarray(Image.open(manifest.parent / row["image"]).convert("RGB"))
        got = np.asarray(Image.open(out / r["output"]).convert("RGB"))
        assert got.shape == src.shape
        mask = np.zeros(src.shape[:2], bool)
        if row["mask"]:
            m = np.asarray(Image.open(manifest.parent / row["mask"]).convert("L"))
            mask |= m > 127
        for x0, y0, x1, y1 in row["mask_boxes"] or []:
            mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        unchanged = (got == src).all(axis=-1)
        assert unchanged[~_grow(mask, 2)].all(), row["id"]
        assert not unchanged[mask].all(), row["id"]
    assert (out / "_SUCCESS").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_rows_without_an_id_fail_alone_and_the_rest_finish(executor, ray_local, tmp_path):
    """A null or empty id can't name an output or drive resume: that row is an error row with a
    result id '#row-N', every other row still runs, and the invariants (one result row per
    manifest row, unique ids) hold."""
    from tests.fixtures_ray import local_dataset

    manifest, rows = local_dataset(tmp_path / "data", 3)
    rows[1] = {**rows[1], "id": None}
    rows.append({**rows[0], "id": "", "split": "train"})
    manifest.write_bytes(manifest_bytes(rows))
    out = tmp_path / "out"
    cfg = config(manifest=str(manifest), output=str(out), backend="opencv", executor=executor)
    summary = run_job(cfg, echo=lambda *_: None)
    meta = {r["id"]: r for r in _local_meta(out)}
    assert sorted(meta) == ["#row-1", "#row-3", "r000", "r002"]
    for rid, pos in (("#row-1", 1), ("#row-3", 3)):
        assert meta[rid]["status"] == "error" and meta[rid]["error_kind"] == "missing_id"
        assert f"manifest row {pos} has no id" in meta[rid]["error"]
    assert meta["#row-3"]["split"] == "train"  # pass-through columns survive on error rows
    assert summary["counts"] == {"ok": 2, "error": 2, "skipped": 0}
    assert summary["success"] and (out / "_SUCCESS").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["r000.png", "r002.png"]
    rerun = run_job(cfg, echo=lambda *_: None)
    assert rerun["rows_this_run"] == 0 and rerun["counts"] == summary["counts"]


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_deleted_output_is_made_again_on_resume(executor, ray_local, tmp_path):
    """An ok row whose object disappeared is not finished: the rerun redoes that row alone (same
    seed, so the same bytes) and the invariants hold again; other rows are not touched."""
    from tests.fixtures_ray import local_dataset

    manifest, _ = local_dataset(tmp_path / "data", 3)
    out = tmp_path / "out"
    cfg = config(manifest=str(manifest), output=str(out), backend="opencv", executor=executor)
    assert run_job(cfg, echo=lambda *_: None)["success"]
    gone = out / "images" / "r001.png"
    before = gone.read_bytes()
    kept_mtime = (out / "images" / "r000.png").stat().st_mtime_ns
    gone.unlink()
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["rows_this_run"] == 1 and summary["success"]
    assert gone.read_bytes() == before
    assert (out / "images" / "r000.png").stat().st_mtime_ns == kept_mtime
