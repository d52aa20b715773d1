"""Object-storage storms on local Ray: the manifest, images and output on S3 (moto) behind
tests/faults_proxy.py. A window of 503 SlowDown, then a window of reset connections, mid-run:
every row exactly once and none sealed as an error (the default retry budget rides it out). A
permanent 403 on the output: a clear failure before any model work (exit 2), no _SUCCESS."""

from __future__ import annotations

import io
import threading
import time

import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.job.run import run_job
from batch_inpaint.vocab import ExitCode
from tests.fixtures_ray import box_mask, manifest_bytes, png, sample_image
from tests.fixtures_s3 import put_objects, s3_client

pytestmark = pytest.mark.slow
N = 40


def _dataset(endpoint: str, bucket: str) -> list[str]:
    objects, rows = {}, []
    for i in range(N):
        rid = f"r{i:03d}"
        objects[f"in/images/{rid}.png"] = png(sample_image(64, 48, i))
        objects[f"in/masks/{rid}.png"] = png(box_mask(64, 48, (4, 6, 30 + i % 7, 27)))
        rows.append({"id": rid, "image": f"images/{rid}.png", "mask": f"masks/{rid}.png"})
    objects["in/manifest.parquet"] = manifest_bytes(rows)
    put_objects(endpoint, bucket, objects)
    return [r["id"] for r in rows]


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = (
        s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def test_a_storm_of_503s_and_resets_mid_run_loses_no_row(ray_local, s3_server, s3_bucket,
                                                         fault_proxy):  # fmt: skip
    ids = _dataset(s3_server, s3_bucket)
    out = f"s3://{s3_bucket}/out"
    cfg = JobConfig(manifest=f"s3://{s3_bucket}/in/manifest.parquet", output=out,
                    backend="opencv", endpoint_url=fault_proxy.url, region="us-east-1",
                    flush_rows=5, batch_size=4)  # fmt: skip
    done: dict = {}

    def job() -> None:
        try:
            done["summary"] = run_job(cfg, echo=lambda *_: None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            done["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 180
    while not _keys(s3_server, s3_bucket, "out/images/") and thread.is_alive():
        assert time.time() < deadline, "no output image after 180 s"
        time.sleep(0.05)
    assert thread.is_alive(), "the job ended before the storm: the test proves nothing"
    with fault_proxy.fault("503", seconds=2) as slow_down:
        time.sleep(2)
    with fault_proxy.fault("reset", seconds=2) as resets:
        time.sleep(2)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in done, done.get("error")
    assert slow_down.hits > 0 and resets.hits > 0, (slow_down.hits, resets.hits)
    summary = done["summary"]
    assert summary["success"], summary["problems"]
    assert summary["counts"] == {"ok": N, "error": 0, "skipped": 0}
    data = s3_client(s3_server).get_object(Bucket=s3_bucket, Key=_keys(
        s3_server, s3_bucket, "out/metadata/results-")[0])["Body"].read()  # fmt: skip
    got = pq.read_table(io.BytesIO(data)).column("id").to_pylist()
    assert sorted(got) == ids  # every row exactly once
    assert sorted(_keys(s3_server, s3_bucket, "out/images/")) == [f"out/images/{i}.png"
                                                                  for i in ids]  # fmt: skip
    assert _keys(s3_server, s3_bucket, "out/_SUCCESS")


def test_a_permanent_403_on_the_output_fails_before_model_work(s3_server, s3_bucket,
                                                                fault_proxy, capsys):  # fmt: skip
    from batch_inpaint.cli import main

    _dataset(s3_server, s3_bucket)
    before = fault_proxy.requests
    with fault_proxy.fault("403", path=f"/{s3_bucket}/out|prefix=out") as denied:
        rc = main(["run", "--manifest", f"s3://{s3_bucket}/in/manifest.parquet",
                   "--output", f"s3://{s3_bucket}/out", "--backend", "opencv",
                   "--endpoint-url", fault_proxy.url, "--region", "us-east-1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == ExitCode.CONFIG == 2, err
    assert denied.hits > 0 and "access denied (403)" in err and f"s3://{s3_bucket}/out" in err
    assert fault_proxy.requests - before < 30, "it went on working after the 403"
    assert not _keys(s3_server, s3_bucket, "out/")  # nothing written, no _SUCCESS
