"""Shards through the local S3 server (moto) and through the Ray executor: the same re-packed
shards as on local disk (read back with `datasets` and webdataset), every row once, and a rerun
with nothing to do."""

from __future__ import annotations

from pathlib import Path

from batch_inpaint.config import JobConfig
from batch_inpaint.job.run import run_job
from tests.fixtures_s3 import put_objects, s3_client
from tests.job.io.shard_data import check_parquet_output, write_hf_shards


def _download(client, bucket: str, prefix: str, to: Path) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for key in (o["Key"] for p in pages for o in p.get("Contents", [])):
        path = to / key[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_parquet_shards_on_s3(s3_bucket, s3_server, tmp_path):
    shards = write_hf_shards(tmp_path / "in", 3, 4, {2: {"bad": 1}})
    put_objects(s3_server, s3_bucket, {f"hf/data/{p.name}": p.read_bytes() for p in shards})
    cfg = JobConfig(manifest=f"s3://{s3_bucket}/hf/data/", output=f"s3://{s3_bucket}/clean/",
                    backend="opencv", executor="local", endpoint_url=s3_server)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"] and summary["counts"] == {"ok": 11, "error": 1, "skipped": 0}
    client = s3_client(s3_server)
    out = tmp_path / "out"
    _download(client, s3_bucket, "clean/", out)
    assert sorted(p.name for p in (out / "data").iterdir()) == [p.name for p in shards]
    by_id = check_parquet_output(shards, out)
    assert by_id["train-00002.parquet:1"]["error_kind"] == "decode"
    again = run_job(cfg, echo=lambda *_: None)
    assert again["success"] and again["rows_this_run"] == 0


def test_webdataset_tars_on_s3_by_a_brace_pattern(s3_bucket, s3_server, tmp_path):
    from tests.job.io.test_webdataset_job import _samples, _write_tars

    tars = _write_tars(tmp_path / "in", 2, 3)
    put_objects(s3_server, s3_bucket, {f"wds/{p.name}": p.read_bytes() for p in tars})
    cfg = JobConfig(manifest=f"s3://{s3_bucket}/wds/{{00000..00001}}.tar",
                    output=f"s3://{s3_bucket}/clean/", backend="opencv", executor="local",
                    endpoint_url=s3_server)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"] and summary["counts"] == {"ok": 4, "error": 1, "skipped": 1}
    out = tmp_path / "out"
    _download(s3_client(s3_server), s3_bucket, "clean/data/", out)
    for path in tars:
        before, after = _samples(path), _samples(out / path.name)
        assert [s["__key__"] for s in after] == [s["__key__"] for s in before]
        assert [s["json"] for s in after] == [s["json"] for s in before]


def test_parquet_shards_through_the_ray_executor(ray_local, tmp_path):
    shards = write_hf_shards(tmp_path / "in", 2, 5, {0: {"empty": 3}})
    out = tmp_path / "out"
    cfg = JobConfig(manifest=str(tmp_path / "in"), output=str(out), backend="opencv",
                    executor="ray", flush_rows=3)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    assert summary["success"] and summary["counts"] == {"ok": 9, "error": 0, "skipped": 1}
    by_id = check_parquet_output(shards, out)
    assert len(by_id) == 10 and by_id["train-00000.parquet:3"]["status"] == "skipped"
