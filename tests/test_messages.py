"""Errors a person can cause say what is wrong and what to do: a path that is not there is "not
found", one that may not be read is "permission denied" / "access denied", local paths never get
an HTTP code, and near-miss column names, config keys and flags get a "did you mean"."""

from __future__ import annotations

import contextlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_inpaint.cli import main
from batch_inpaint.config import JobConfig
from batch_inpaint.errors import AccessDeniedError, ConfigError, ManifestError, NotFoundError
from batch_inpaint.job.driver.scan import scan_manifest
from batch_inpaint.manifest.manifest import Manifest
from batch_inpaint.storage import Storage
from batch_inpaint.vocab import ExitCode
from tests.test_web import EXAMPLES

IMAGE, MASK = str(EXAMPLES / "images" / "coffee.png"), str(EXAMPLES / "masks" / "coffee.png")


@contextlib.contextmanager
def unprivileged():
    """Run as 'nobody' for a moment when root (root ignores file permissions)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def write_manifest(path, **columns) -> str:
    columns = columns or {"id": ["a"], "image": [IMAGE], "mask": [MASK]}
    pq.write_table(pa.table(columns), str(path))
    return str(path)


def no_http_codes(text: str) -> None:
    assert "404" not in text and "403" not in text, text


# -- a manifest that is not there, or may not be read -----------------------------------------
def test_a_wrong_manifest_path_is_not_found_everywhere(tmp_path, capsys):
    missing = str(tmp_path / "nope.parquet")
    assert main(["run", "--manifest", missing, "--output", str(tmp_path / "o")]) == ExitCode.CONFIG
    run_err = capsys.readouterr().err
    assert main(["manifest", "validate", missing]) == ExitCode.CONFIG
    validate_err = capsys.readouterr().err
    with pytest.raises(NotFoundError) as read_exc:
        Manifest.read(missing)
    for text in (run_err, validate_err, str(read_exc.value)):
        assert f"{missing}: not found (no such file or folder)" in text and "check the path" in text
        no_http_codes(text)
    assert "batch-inpaint manifest build" in run_err  # and how to make one


def test_a_manifest_that_may_not_be_read_is_permission_denied(tmp_path):
    os.chmod(tmp_path, 0o755)
    path = write_manifest(tmp_path / "m.parquet")
    os.chmod(path, 0)
    cfg = JobConfig(manifest=path, output=str(tmp_path / "o"))
    with unprivileged():
        with pytest.raises(AccessDeniedError) as read_exc:
            Manifest.read(path)
        with pytest.raises(ConfigError) as scan_exc:
            scan_manifest(Storage(), cfg)
    for exc in (read_exc, scan_exc):
        text = str(exc.value)
        assert f"{path}: permission denied while reading the manifest" in text
        assert "owner and permissions" in text and "not found" not in text
        no_http_codes(text)


def test_manifest_on_s3_not_found_and_access_denied_told_apart(
    s3_bucket, s3_storage_options, request
):
    uri = f"s3://{s3_bucket}/m.parquet"
    fs, path = Storage(s3_storage_options).pyarrow_filesystem(uri)
    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"], "mask": ["m.png"]}), path,
                   filesystem=fs)  # fmt: skip
    with pytest.raises(NotFoundError, match=r"nope\.parquet: not found \(404\)"):
        Manifest.read(f"s3://{s3_bucket}/nope.parquet", s3_storage_options)
    with pytest.raises(ConfigError, match=r"nope\.parquet: not found \(404\)"):
        cfg = JobConfig(manifest=f"s3://{s3_bucket}/nope.parquet", output="/tmp/unused")
        scan_manifest(Storage(s3_storage_options), cfg)
    list_only = request.getfixturevalue("s3_list_only_options")  # moto enforces IAM from here
    with pytest.raises(AccessDeniedError) as exc:
        Manifest.read(uri, list_only)
    assert "access denied (403) while reading the manifest; check the credentials" in str(exc.value)
    with pytest.raises(ConfigError, match=r"access denied \(403\)"):
        scan_manifest(Storage(list_only), JobConfig(manifest=uri, output="/tmp/unused"))


# -- other paths a person gives ------------------------------------------------------------------
def test_a_missing_image_mask_or_config_file_is_not_found_without_http_codes(tmp_path, capsys):
    out = str(tmp_path / "out.png")
    nope = str(tmp_path / "nope.png")
    for args in ([nope, MASK], [IMAGE, nope]):
        assert main(["inpaint", *args, "-o", out, "--backend", "opencv"]) == ExitCode.CONFIG
        err = capsys.readouterr().err
        assert f"{nope}: not found (no such file or folder)" in err
        no_http_codes(err)
    config = str(tmp_path / "job.yaml")
    assert main(["run", "--manifest", "m", "--output", "o", "--config", config]) == ExitCode.CONFIG
    assert (
        f"config file {config}: not found (no such file); check the path" in capsys.readouterr().err
    )


def test_a_missing_model_folder_or_weights_file_says_so_without_http_codes(tmp_path):
    from batch_inpaint.models import load_inpainter

    folder, weights = str(tmp_path / "sd2"), str(tmp_path / "big-lama.safetensors")
    with pytest.raises(ConfigError) as sd2:
        load_inpainter("diffusers", folder, device="cpu")
    assert f"{folder!r}: no such directory" in str(sd2.value)
    from batch_inpaint.models.lama_weights import resolve_weights  # the lama backend's loader

    with pytest.raises(ConfigError) as lama:
        resolve_weights(weights)
    assert f"{weights}: no such file or folder" in str(lama.value)
    for exc in (sd2, lama):
        no_http_codes(str(exc.value))


# -- did you mean ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "columns, hint",
    [
        ({"id": ["a"], "image": [IMAGE], "mask_path": [MASK]}, ("mask_path", "mask")),
        ({"id": ["a"], "image_uri": [IMAGE], "mask": [MASK]}, ("image_uri", "image")),
        ({"ID": ["a"], "image": [IMAGE], "mask": [MASK]}, ("ID", "id")),
        ({"id": ["a"], "imgae": [IMAGE], "mask": [MASK]}, ("imgae", "image")),
    ],
)
def test_a_near_miss_column_gets_did_you_mean(tmp_path, capsys, columns, hint):
    path = write_manifest(tmp_path / "m.parquet", **columns)
    wrong, right = hint
    expected = f"did you mean {right!r}? rename column {wrong!r} to {right!r}"
    with pytest.raises(ManifestError) as exc:
        Manifest.read(path)
    assert expected in str(exc.value)
    assert main(["run", "--manifest", path, "--output", str(tmp_path / "o")]) == ExitCode.CONFIG
    assert expected in capsys.readouterr().err


def test_a_column_like_no_known_one_gets_no_guess(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", id=["a"], image=[IMAGE], what=["spoon"])
    with pytest.raises(ManifestError) as exc:
        Manifest.read(path)
    assert "no mask column" in str(exc.value) and "did you mean" not in str(exc.value)


def test_a_near_miss_config_key_gets_did_you_mean(tmp_path, capsys):
    hint = r"\['guidance'\] \('guidance': did you mean 'guidance_scale'\?\)"
    with pytest.raises(ConfigError, match=hint):
        JobConfig.from_dict({"manifest": "m", "output": "o", "guidance": 3})
    config = tmp_path / "job.yaml"
    config.write_text("stpes: 20\nzzz: 1\n")
    assert main(["run", "--manifest", "m", "--output", "o", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown field(s) ['stpes', 'zzz'] ('stpes': did you mean 'steps'?);" in err


@pytest.mark.parametrize(
    "argv, hint",
    [
        (
            ["run", "--manifest", "m", "--output", "o", "--stpes", "3"],
            "--stpes: did you mean --steps?",
        ),
        (["manifest", "validate", "m", "--sampel", "3"], "--sampel: did you mean --sample?"),
        (["demo", "--bakend", "opencv"], "--bakend: did you mean --backend?"),
        (["serve", "--max-uplod-mb", "3"], "--max-uplod-mb: did you mean --max-upload-mb?"),
    ],
)
def test_a_near_miss_flag_gets_did_you_mean(capsys, argv, hint):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and hint in err


def test_a_flag_like_no_known_one_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--manifest", "m", "--output", "o", "--zzzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzz" in err and "did you mean" not in err
