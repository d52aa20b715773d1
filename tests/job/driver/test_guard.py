"""The output contract's location and ownership checks (job/driver/guard.py), on real local folders and
a real S3 endpoint (moto), before any cluster work."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from batch_inpaint.errors import ConfigError
from batch_inpaint.job.driver import guard
from batch_inpaint.storage.store import Storage
from tests.fixtures_s3 import put_objects


def _uris(*values):
    return pa.chunked_array([pa.array(list(values), pa.string())])


def test_input_locations_are_the_manifest_and_the_folders_its_uris_read():
    locs = guard.input_locations(
        "data/manifest.parquet",
        "data",
        _uris(
            "images/a.png", "images/b.png", "/abs/masks/a.png", "s3://b/k/c.png", "bare.png", None
        ),
    )
    assert locs == ["data/manifest.parquet", "/abs/masks", "data", "data/images", "s3://b/k"]


@pytest.mark.parametrize(
    "output, how",
    [
        ("data", "contains"),  # the reported accident: --output data over data/images
        ("data/images", "is"),
        ("data/images/out", "lies inside"),
        ("data/manifest.parquet", "is"),
        ("./data/images/", "is"),
    ],
)
def test_output_over_inputs_is_refused_naming_both(tmp_path, monkeypatch, output, how):
    monkeypatch.chdir(tmp_path)
    inputs = guard.input_locations("data/manifest.parquet", "data", _uris("images/a.png"))
    with pytest.raises(ConfigError) as err:
        guard.check_output_location(output, inputs)
    assert how in str(err.value) and "which the manifest reads" in str(err.value)


@pytest.mark.parametrize("output", ["data/cleaned", "data/imagesX", "out", "s3://b/out"])
def test_outputs_apart_from_inputs_pass(tmp_path, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    inputs = guard.input_locations("data/manifest.parquet", "data", _uris("images/a.png"))
    guard.check_output_location(output, inputs)


def test_s3_prefixes_compare_by_whole_segments():
    inputs = ["s3://bucket/m.parquet", "s3://bucket/raw/images"]
    guard.check_output_location("s3://bucket/raw/images-cleaned", inputs)
    guard.check_output_location("s3://other/raw", inputs)
    with pytest.raises(ConfigError, match="contains"):
        guard.check_output_location("s3://bucket/raw/", inputs)
    with pytest.raises(ConfigError, match="lies inside"):
        guard.check_output_location("s3://bucket/raw/images/out", inputs)


def test_owner_new_ours_and_foreign_on_local_disk(tmp_path):
    storage = Storage()
    out = tmp_path / "out"
    assert guard.check_owner(storage, str(out), allow_non_empty=False) == "new"
    out.mkdir()
    assert guard.check_owner(storage, str(out), allow_non_empty=False) == "new"
    guard.claim(storage, str(out), "run-1", "new")
    assert guard.check_owner(storage, str(out), allow_non_empty=False) == "ours"
    assert json.loads((out / guard.MARKER).read_text())["run_id"] == "run-1"

    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "keep.png").write_bytes(b"user's")
    with pytest.raises(ConfigError, match="not empty .*images.*no run of batch-inpaint"):
        guard.check_owner(storage, str(foreign), allow_non_empty=False)
    # Even with the flag: 'images' is a name the job writes, and it is not ours.
    with pytest.raises(ConfigError, match="already holds \\['images'\\]"):
        guard.check_owner(storage, str(foreign), allow_non_empty=True)

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("user's")
    with pytest.raises(ConfigError, match="--allow-non-empty-output"):
        guard.check_owner(storage, str(shared), allow_non_empty=False)
    assert guard.check_owner(storage, str(shared), allow_non_empty=True) == "adopted"


def test_an_output_of_an_older_version_is_recognised_by_its_job_json(tmp_path):
    out = tmp_path / "old"
    (out / "metadata").mkdir(parents=True)
    (out / "job.json").write_text(json.dumps({"run_id": "r", "config": {}, "versions": {}}))
    assert guard.check_owner(Storage(), str(out), allow_non_empty=False) == "legacy"
    guard.claim(Storage(), str(out), "run-2", "legacy")  # what a run does: listed only once
    assert guard.check_owner(Storage(), str(out), allow_non_empty=False) == "ours"
    (out / guard.MARKER).unlink()
    (out / "job.json").write_text("{}")  # not ours after all
    with pytest.raises(ConfigError):
        guard.check_owner(Storage(), str(out), allow_non_empty=False)


def test_owner_checks_on_s3(s3_server, s3_bucket, s3_storage_options):
    storage = Storage(s3_storage_options)
    out = f"s3://{s3_bucket}/out"
    assert guard.check_owner(storage, out, allow_non_empty=False) == "new"
    put_objects(s3_server, s3_bucket, {"out/other/thing.bin": b"x"})
    with pytest.raises(ConfigError, match="not empty \\(other\\)"):
        guard.check_owner(storage, out, allow_non_empty=False)
    assert guard.check_owner(storage, out, allow_non_empty=True) == "adopted"
    guard.claim(storage, out, "run-1", "adopted")
    assert guard.check_owner(storage, out, allow_non_empty=False) == "ours"
    # a sibling prefix that merely starts with the same letters is not inside the output
    put_objects(s3_server, s3_bucket, {"out2/x.bin": b"x"})
    assert guard.check_owner(storage, f"s3://{s3_bucket}/out2", allow_non_empty=True) == "adopted"


def test_output_over_inputs_through_a_symlink_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    # the output reached through a symlink to the inputs' folder
    inputs = guard.input_locations(str(data / "m.parquet"), str(data), _uris("images/a.png"))
    with pytest.raises(ConfigError, match="through a symbolic link") as err:
        guard.check_output_location(str(tmp_path / "link" / "images"), inputs)
    assert f"link/images is {data}/images" in str(err.value)
    with pytest.raises(ConfigError, match="contains"):
        guard.check_output_location(str(tmp_path / "link"), inputs)
    # the inputs read through a symlink into the output (a finished output's images)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (tmp_path / "out-link").symlink_to(out)
    via = guard.input_locations(
        str(tmp_path / "m.parquet"), str(tmp_path), _uris("out-link/images/a.png")
    )
    with pytest.raises(ConfigError, match="contains .*out-link/images .*through a symbolic link"):
        guard.check_output_location(str(out), via)
    guard.check_output_location(str(tmp_path / "elsewhere"), via)  # apart: still fine


def test_s3_locations_compare_with_empty_and_dot_segments_folded():
    inputs = ["s3://bucket/m.parquet", "s3://bucket//raw/./images"]
    with pytest.raises(ConfigError, match="contains"):
        guard.check_output_location("s3://bucket/raw", inputs)
    with pytest.raises(ConfigError, match="is"):
        guard.check_output_location("s3://bucket/x/../raw/images/", inputs)
    guard.check_output_location("s3://bucket/raw/images-cleaned", inputs)


def _job_lock(**fields) -> bytes:
    body = {"owner": "h:1:abcd", "host": "h", "pid": 1, "acquired_at": 1.0, "renewed_at": 1.0}
    return json.dumps({**body, **fields}).encode()


@pytest.mark.parametrize("content", [b"", b"my notes", b'{"owner": 3}', b"[1, 2]"])
def test_a_users_lock_file_is_refused_naming_it(tmp_path, content):
    storage = Storage()
    out = tmp_path / "out"
    out.mkdir()
    (out / "_LOCK").write_bytes(content)
    for allow in (False, True):
        with pytest.raises(ConfigError, match="holds _LOCK .*not a lock that a run of batch-inp"):
            guard.check_owner(storage, str(out), allow_non_empty=allow)
    (out / "notes.txt").write_text("user's")  # beside other files, with the flag: the same
    with pytest.raises(ConfigError, match="_LOCK"):
        guard.check_owner(storage, str(out), allow_non_empty=True)
    guard.claim(storage, str(out), "run-1", "adopted")  # even in an output of the job
    with pytest.raises(ConfigError, match="_LOCK"):
        guard.check_owner(storage, str(out), allow_non_empty=False)
    assert (out / "_LOCK").read_bytes() == content


def test_a_lock_folder_is_a_users_too(tmp_path):
    out = tmp_path / "out"
    (out / "_LOCK").mkdir(parents=True)
    (out / "_LOCK" / "x").write_text("user's")
    with pytest.raises(ConfigError, match="holds _LOCK \\(a folder\\)"):
        guard.check_owner(Storage(), str(out), allow_non_empty=True)


def test_the_jobs_own_locks_and_takeover_markers_are_recognised(tmp_path):
    storage = Storage()
    out = tmp_path / "out"
    out.mkdir()
    (out / "_LOCK").write_bytes(_job_lock())
    (out / "_LOCK.takeover-0123456789abcdef").write_text("h:1:abcd")
    assert guard.check_owner(storage, str(out), allow_non_empty=False) == "new"
    old = {"owner": "x", "acquired_at": 1.0, "expires_at": 2.0}  # an older version's lock
    (out / "_LOCK").write_text(json.dumps(old))
    assert guard.check_owner(storage, str(out), allow_non_empty=False) == "new"
    guard.claim(storage, str(out), "run-1", "new")
    assert guard.check_owner(storage, str(out), allow_non_empty=False) == "ours"
    (out / "_LOCK.bak").write_text("user's")  # another _LOCK* name: an ordinary user file
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "_LOCK.bak").write_text("user's")
    with pytest.raises(ConfigError, match="not empty \\(_LOCK.bak\\)"):
        guard.check_owner(storage, str(out2), allow_non_empty=False)
    assert guard.check_owner(storage, str(out2), allow_non_empty=True) == "adopted"


def test_a_users_lock_on_s3_is_refused(s3_server, s3_bucket, s3_storage_options):
    storage = Storage(s3_storage_options)
    put_objects(s3_server, s3_bucket, {"out/_LOCK": b"user's", "ok/_LOCK": _job_lock()})
    with pytest.raises(ConfigError, match="holds _LOCK \\(6 bytes\\)"):
        guard.check_owner(storage, f"s3://{s3_bucket}/out", allow_non_empty=True)
    assert guard.check_owner(storage, f"s3://{s3_bucket}/ok", allow_non_empty=False) == "new"


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("s3://b//prefix", True),
        ("s3://b/a//b/", True),
        ("s3://b/a/./b", True),
        ("gs://b/a/../b", True),
        ("s3://b/prefix/", False),
        ("s3://b", False),
        ("s3://b/", False),
        ("/tmp//out", False),  # local: the OS folds it the same way for every call
    ],
)
def test_output_uris_with_empty_or_dot_segments_are_named(uri, problem):
    from batch_inpaint.storage.uri import output_uri_problem

    assert bool(output_uri_problem(uri)) is problem


def test_an_s3_output_with_an_empty_segment_is_refused_before_any_write(
    s3_server, s3_bucket, tmp_path, capsys
):
    """s3://bucket//prefix wrote keys starting with '/', which listings fold away: every run
    found 0 done, redid every row and ended INCOMPLETE. It is refused, saying how to write it."""
    from batch_inpaint.cli import main
    from batch_inpaint.vocab import ExitCode
    from tests.fixtures_ray import local_dataset
    from tests.fixtures_s3 import s3_client

    manifest, _ = local_dataset(tmp_path, 2)
    args = ["run", "--manifest", str(manifest), "--output", f"s3://{s3_bucket}//prefix",
            "--backend", "opencv", "--endpoint-url", s3_server]  # fmt: skip
    assert main(args) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert f"s3://{s3_bucket}//prefix has an empty" in err and f"s3://{s3_bucket}/prefix" in err
    assert "Contents" not in s3_client(s3_server).list_objects_v2(Bucket=s3_bucket)
    assert main([*args[:-4], "--dry-run", *args[-4:]]) == ExitCode.CONFIG  # the dry run too
