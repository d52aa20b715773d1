"""A missing S3 credential (issue 25, item 11) is one message naming the ways to give one
(environment, --profile, instance role, --anon), from `run` before any cluster work and from
`manifest validate` once, not once per row and object."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batch_inpaint.cli import main
from batch_inpaint.manifest.validation import validate_table
from batch_inpaint.storage.store import Storage, StorageOptions
from batch_inpaint.vocab import ExitCode
from tests.fixtures_ray import manifest_bytes

WAYS = ("AWS_ACCESS_KEY_ID", "--profile", "instance role", "--anon")


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role here
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing is ever reached


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "image": f"s3://bucket/img/{i}.png", "mask": f"s3://bucket/m/{i}.png"}
            for i in range(n)]  # fmt: skip


def test_validate_says_it_once(no_credentials, tmp_path, capsys):
    table = pa.table({k: [r[k] for r in _rows(20)] for k in ("id", "image", "mask")})
    report = validate_table(table, Storage(StorageOptions.from_env()))
    assert len(report.problems) == 1, report.format()
    problem = report.problems[0]
    assert problem.kind == "access_denied" and problem.row_id is None
    assert all(w in problem.message for w in WAYS)
    (tmp_path / "m.parquet").write_bytes(manifest_bytes(_rows(20)))
    assert main(["manifest", "validate", str(tmp_path / "m.parquet")]) == ExitCode.INCOMPLETE
    out = capsys.readouterr().out
    assert out.count("no S3 credentials found") == 1
    assert main(["manifest", "validate", str(tmp_path / "m.parquet"), "--anon",
                 "--no-objects"]) == ExitCode.OK  # fmt: skip


def test_run_and_validate_of_an_s3_manifest_stop_with_one_message(no_credentials, tmp_path,
                                                                   capsys):  # fmt: skip
    for argv in (["manifest", "validate", "s3://bucket/m.parquet"],
                 ["run", "--manifest", "s3://bucket/m.parquet", "--output", str(tmp_path / "o"),
                  "--backend", "opencv"]):  # fmt: skip
        assert main(argv) == ExitCode.CONFIG
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no S3 credentials found for s3://bucket/m" in err
        assert all(w in err for w in WAYS), err
    assert not (tmp_path / "o").exists()


def test_a_named_profile_that_is_not_there(no_credentials):
    from batch_inpaint.storage.credentials import missing_credentials

    why = missing_credentials(StorageOptions(profile="nope"), ["s3://b/x"])
    assert "AWS profile 'nope' is not in" in why and "--anon" in why
    assert missing_credentials(StorageOptions(anon=True), ["s3://b/x"]) is None
    assert missing_credentials(StorageOptions(), ["/local/x.png"]) is None
