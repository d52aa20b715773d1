"""Detection's checks before any cluster work (exit status 2) and its place in the formats: a
manifest may give queries instead of masks, and results of runs from before detection still read
(their rows get null detection columns)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from tests.fixtures_s3 import put_objects
from tests.job.stages.test_detect_job import _config, _local


def _check_run(cfg):
    from batch_inpaint.job.driver import plan
    from batch_inpaint.storage.store import Storage

    return plan.check_run(cfg, Storage(cfg.storage_options()), echo=lambda *_: None)


def test_settings_that_cannot_work_stop_before_the_cluster(tmp_path):
    _local(tmp_path)
    m, o = str(tmp_path / "manifest.parquet"), str(tmp_path / "out")
    cases = {
        "'detector'": dict(detector=str(tmp_path / "no-such-folder")),
        "max_residual": dict(max_residual=0.5),
        "'detector' and 'text_detector'": dict(detector="none", text_detector="none"),
    }
    for words, kw in cases.items():
        with pytest.raises(ConfigError, match=words):
            _check_run(_config(manifest=m, output=o, **kw))
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": ["a"], "image": ["x.png"], "detect": [5]}), bad / "m2.parquet")
    with pytest.raises(ConfigError, match="row 'a'"):  # no row has queries: nothing would detect
        _check_run(_config(manifest=str(bad / "m2.parquet"), output=o, detect=[]))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{'detector': path, 'segmenter': path}: real tiny checkpoints, as a user would make them."""
    from batch_inpaint.cli import main

    root = tmp_path_factory.mktemp("tiny-detect")
    for kind in ("detector", "segmenter"):
        assert main(["make-tiny-model", "--kind", kind, str(root / kind)]) == 0
    return {kind: str(root / kind) for kind in ("detector", "segmenter")}


def test_a_model_folder_of_the_wrong_kind_stops_run_before_the_cluster(tmp_path, tiny_models,
                                                                       capsys):  # fmt: skip
    """`run --detector SEG` says what `detect --detector SEG` says, with exit 2, before Ray
    starts and before anything is written to the output."""
    from batch_inpaint.cli import main

    _local(tmp_path)
    det, seg = tiny_models["detector"], tiny_models["segmenter"]
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "grounding-dino"}')
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    cases = [
        (["--detector", seg], "'detector'.*'sam' checkpoint.*--kind detector"),
        (["--detector", str(tmp_path / "images")], "'detector'.*no model.safetensors"),
        (["--detector", str(pickled)], "'detector'.*pytorch_model.bin"),
        (["--segmenter", det], "'segmenter'.*'grounding-dino' checkpoint.*--kind segmenter"),
        (["--text-detector", det], "'text_detector'.*'grounding-dino'.*--kind text-detector"),
        (["--segmenter", str(tmp_path / "nope")], "'segmenter'.*not a folder.*--kind segmenter"),
        (["--text-detector", str(tmp_path / "nope")], "not a folder.*--kind text-detector"),
    ]
    out = tmp_path / "out"
    for flags, words in cases:
        rc = main(["run", "--manifest", str(tmp_path / "manifest.parquet"), "--output", str(out),
                   "--backend", "opencv", "--detect", "watermark", *flags])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2, (flags, err)
        assert re.search(words, err), (flags, err)
        assert "Traceback" not in err and not out.exists(), flags
    # the right kinds pass the check (the actors load them; not run here)
    _check_run(_config(manifest=str(tmp_path / "manifest.parquet"), output=str(out),
                       detector=det, segmenter=seg))  # fmt: skip


def test_an_s3_model_prefix_is_checked_from_its_listing_and_config(s3_server, s3_bucket,
                                                                   tiny_models):  # fmt: skip
    from pathlib import Path

    from batch_inpaint.job.driver.detect_checks import check_model_files
    from batch_inpaint.storage.store import Storage

    files = {
        f"models/seg/{p.name}": p.read_bytes() for p in Path(tiny_models["segmenter"]).iterdir()
    }
    put_objects(s3_server, s3_bucket, files)
    storage = Storage()  # the env points at moto (s3_bucket)
    seg = f"s3://{s3_bucket}/models/seg"
    check_model_files(JobConfig(segmenter=seg), "segmenter", storage)  # the right kind: no error
    with pytest.raises(ConfigError, match="'detector'.*'sam' checkpoint"):
        check_model_files(JobConfig(detector=seg), "detector", storage)
    with pytest.raises(ConfigError, match="no files there"):
        check_model_files(JobConfig(detector=f"s3://{s3_bucket}/models/none"), "detector", storage)


def test_detection_settings_without_anything_to_detect_are_refused(tmp_path, capsys):
    """A detection flag that would be ignored (no --detect, no `detect` column) is exit 2 naming
    it; --detect "" (queries given, none in them) too."""
    from batch_inpaint.cli import main

    _local(tmp_path)
    plain = tmp_path / "plain.parquet"  # masks only: no detect column
    pq.write_table(pa.table({"id": ["a"], "image": ["images/found-1.png"],
                             "mask_boxes": [[[1.0, 1.0, 9.0, 9.0]]]}), plain)  # fmt: skip
    cases = [
        (["--detect-threshold", "0.5"], "'detect_threshold'.*detects nothing"),
        (["--detector", str(tmp_path)], "'detector'.*detects nothing"),
        (["--segmenter", "none"], "'segmenter'.*detects nothing"),
        (["--detect-actors", "2"], "'detect_actors'.*detects nothing"),
        (["--detect", ""], "'detect'.*no query"),
        (["--detect", " , "], "'detect'.*no query"),
        (["--verify"], "'verify'.*nothing to verify"),
    ]
    for flags, words in cases:
        rc = main(["run", "--manifest", str(plain), "--output", str(tmp_path / "out"),
                   "--backend", "opencv", *flags])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and re.search(words, err), (flags, err)
    # the same settings are fine where there is something to detect: the rows' own queries
    cfg = _config(manifest=str(tmp_path / "manifest.parquet"), output=str(tmp_path / "out"),
                  detect=[], detect_threshold=0.5, detect_actors=2)  # fmt: skip
    _check_run(cfg)
    with pytest.raises(ConfigError, match="detect_threshold"):
        _check_run(_config(manifest=str(plain), output=str(tmp_path / "out"), detect=[],
                           detect_threshold=0.5))  # fmt: skip


def test_a_detect_column_or_job_queries_stand_in_for_a_mask_column():
    from batch_inpaint.errors import ManifestError
    from batch_inpaint.manifest.schema import conform_manifest

    plain = pa.table({"id": ["a"], "image": ["a.png"]})
    with pytest.raises(ManifestError, match="--detect"):
        conform_manifest(plain)
    assert conform_manifest(plain, needs_mask=False).num_rows == 1  # the job's --detect
    assert conform_manifest(plain.append_column("detect", pa.array(["logo"]))).num_rows == 1


def test_results_of_older_runs_without_the_detection_columns_still_read(tmp_path):
    """Metadata parts written before detection lack its columns: read back, they are null."""
    import datetime as dt

    from batch_inpaint.job.driver import results
    from batch_inpaint.manifest.schema import RESULT_SCHEMA
    from batch_inpaint.storage.store import Storage

    new = ("detections", "mask_used", "note", "residual_score")
    now = dt.datetime.now(dt.timezone.utc)
    old = pa.table({"id": ["a"], "status": ["ok"], "output": ["images/a.png"], "finished_at": [now]},
                   schema=pa.schema([RESULT_SCHEMA.field(n) for n in
                                     ("id", "status", "output", "finished_at")]))  # fmt: skip
    mine = RESULT_SCHEMA.empty_table().to_pylist() + [
        {f.name: None for f in RESULT_SCHEMA} | {"id": "b", "status": "skipped",
         "finished_at": now, "note": "nothing found for logo", "detections": []}]  # fmt: skip
    meta = tmp_path / "out" / "metadata"
    meta.mkdir(parents=True)
    (meta / "part-old.parquet").write_bytes(results.table_bytes(old))
    (meta / "part-new.parquet").write_bytes(
        results.table_bytes(pa.Table.from_pylist(mine, RESULT_SCHEMA))
    )
    table, parts = results.read_results(Storage(), str(tmp_path / "out"))
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(parts) == 2 and all(rows["a"][c] is None for c in new)
    assert rows["b"]["note"] == "nothing found for logo" and rows["b"]["detections"] == []


@pytest.mark.parametrize("as_lists", [False, True])
def test_job_queries_are_the_union_of_the_rows_and_the_jobs(tmp_path, as_lists):
    """The driver reads only the detect column's distinct values; rows `batch-inpaint detect`
    already did add nothing; a bad value is left to its row, unless no value parses."""
    from batch_inpaint.detect.base import detections_arrow_type
    from batch_inpaint.job.stages.detect import job_queries
    from batch_inpaint.storage.store import Storage

    values = [["logo", "text"], None, ["logo"], ["face"]] if as_lists else [
        "logo, text", None, "logo", "face"]  # fmt: skip
    done = [None, None, None, [{"label": "face", "score": 0.9, "box": [0.0, 0.0, 1.0, 1.0]}]]
    table = pa.table({"id": list("abcd"), "image": ["x.png"] * 4, "detect": values,
                      "detections": pa.array(done, detections_arrow_type())})  # fmt: skip
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    cfg = _config(manifest=str(path), output=str(tmp_path / "o"), detect=["watermark"])
    storage = Storage(cfg.storage_options())
    # row b has none of its own: the job's; row d was detected already: its 'face' is not asked
    assert sorted(job_queries(storage, cfg)) == ["logo", "text", "watermark"]
    # a bad value is its row's business (the detect stage fails that row): the others detect
    bad = pa.array([None, [None], ["logo"], None]) if as_lists else pa.array([None, 5, None, None])
    pq.write_table(pa.table({"id": list("abcd"), "image": ["x.png"] * 4, "detect": bad}), path)
    expected = ["logo", "watermark"] if as_lists else ["watermark"]  # null rows: the job's
    assert sorted(job_queries(storage, cfg)) == expected
    # no job queries, and no row's that parse: nothing would detect, so the run stops, naming it
    cfg = _config(manifest=str(path), output=str(tmp_path / "o"), detect=[])
    only_bad = pa.array([None, [None], None, None]) if as_lists else pa.array([None, 5, None, None])
    pq.write_table(pa.table({"id": list("abcd"), "image": ["x.png"] * 4, "detect": only_bad}),
                   path)  # fmt: skip
    with pytest.raises(ConfigError, match="row 'b'"):
        job_queries(storage, cfg)


EMPTY = ["", "   ", " , ,", [], [""], ["  "], [" , "], [" ", ","]]


@pytest.mark.parametrize("value", EMPTY + [None])
def test_a_detect_value_with_no_query_in_it_means_the_jobs_queries(value):
    """One rule for every empty form: no query after parsing is no value, as null is."""
    from batch_inpaint.detect.queries import queries_of, row_queries

    row = {"id": "a", "detect": value}
    assert queries_of(row, ["logo"]) == row_queries(row, ["logo"]) == ["logo"]
    assert queries_of(row, []) == []


def test_a_bad_detect_cell_fails_its_row_only(tmp_path):
    """Rows with bad `detect` values are error rows (kind bad_value, naming the row and the
    cause) after the detect stage; empty values take the job's queries; the others finish."""
    from batch_inpaint.job.stages.detect import DetectStage, job_queries
    from batch_inpaint.job.stages.prepare import prepare_batch
    from tests.job.helpers import context
    from tests.job.stages.test_detect_job import boxes_provider

    rows = _local(tmp_path)[:2]
    image = rows[0]["image"]
    values = [["watermark", "logo"], [None], [], ["  "], None]
    ids = ["good", "bad", "empty", "blank", "null"]
    table = pa.table({"id": ids, "image": [image] * 5,
                      "detect": pa.array(values, pa.list_(pa.string()))})  # fmt: skip
    pq.write_table(table, tmp_path / "manifest.parquet")
    ctx = context(tmp_path, detect=["watermark"])
    assert sorted(job_queries(ctx.storage, ctx.config)) == ["logo", "watermark"]
    detected = DetectStage(ctx, provider_factory=boxes_provider)(table)
    out = {r["id"]: r for r in prepare_batch(detected, ctx).to_pylist()}
    bad = out["bad"]
    assert (bad["_bi_status"], bad["_bi_error_kind"]) == ("error", "bad_value")
    assert bad["_bi_error"].startswith("row 'bad': column 'detect'") and "None" in bad["_bi_error"]
    for rid in ("good", "empty", "blank", "null"):
        assert out[rid]["_bi_status"] == "pending", out[rid]
        assert out[rid]["_bi_detections"][0]["label"] == "watermark", rid  # the job's, or its own


def test_no_mask_in_a_detecting_job_names_the_detect_column(tmp_path):
    from batch_inpaint.job.stages.detect import DetectStage
    from batch_inpaint.job.stages.prepare import prepare_batch
    from tests.job.helpers import context
    from tests.job.stages.test_detect_job import boxes_provider

    image = _local(tmp_path)[0]["image"]
    table = pa.table({"id": ["with", "without"], "image": [image] * 2,
                      "detect": ["watermark", None]})  # fmt: skip
    ctx = context(tmp_path)  # queries per row only
    out = prepare_batch(DetectStage(ctx, provider_factory=boxes_provider)(table), ctx).to_pylist()
    assert out[1]["_bi_error_kind"] == "no_mask"
    assert "'detect' column" in out[1]["_bi_error"] and "--detect" in out[1]["_bi_error"]


def test_a_rows_list_reads_as_the_jobs_detect_does():
    from batch_inpaint.detect.queries import row_queries

    assert row_queries({"detect": ["Logo", "text, caption"]}, []) == ["logo", "text", "caption"]
    with pytest.raises(ConfigError, match="row 'a'") as bad:
        row_queries({"id": "a", "detect": ["logo", 3]}, [])
    assert bad.value.kind == "bad_value"


@pytest.mark.parametrize(
    "column",
    [pa.array([[["logo"]], None]), pa.array([{"q": "logo"}, None]), pa.array([[1.0], None])],
    ids=["nested-lists", "structs", "floats"],
)
def test_a_detect_column_of_any_other_type_fails_its_rows_not_the_driver(tmp_path, column):
    """Any Arrow type reaches the per-row rule: a value that is no query is that row's error."""
    from batch_inpaint.job.stages.detect import job_queries
    from batch_inpaint.storage.store import Storage

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "image": ["x.png"] * 2, "detect": column}), path)
    cfg = _config(manifest=str(path), output=str(tmp_path / "o"), detect=["logo"])
    assert job_queries(Storage(), cfg) == ["logo"]  # row b: the job's; row a fails in the stage
    cfg = _config(manifest=str(path), output=str(tmp_path / "o"), detect=[])
    with pytest.raises(ConfigError, match="row 'a'"):
        job_queries(Storage(), cfg)
