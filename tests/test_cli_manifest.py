"""`batch-inpaint manifest build | validate | show`, in-process, on local dirs and moto S3."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from batch_inpaint import Manifest
from batch_inpaint.cli import main
from tests.fixtures_s3 import put_objects


def png(w=8, h=6, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def dirs(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "img" / f"{name}.png").write_bytes(png())
    (tmp_path / "msk" / "a_mask.png").write_bytes(png(mode="L"))
    (tmp_path / "msk" / "b_mask.png").write_bytes(png(4, 4, "L"))  # wrong size
    (tmp_path / "msk" / "z_mask.png").write_bytes(png(mode="L"))  # no image
    return tmp_path


def test_build_validate_show_local(dirs, capsys):
    out = str(dirs / "m.parquet")
    args = ["manifest", "build", "--images", str(dirs / "img"), "--masks", str(dirs / "msk")]
    assert main([*args, "--mask-pattern", "{stem}_mask.png", "-o", out]) == 0
    captured = capsys.readouterr()
    assert "wrote 2 rows" in captured.out
    assert "c.png" in captured.err and "z_mask.png" in captured.err  # unpaired, named
    assert main([*args, "--mask-pattern", "{stem}_mask.png", "-o", out, "--strict"]) == 1
    assert len(Manifest.read(out)) == 2

    assert main(["manifest", "validate", out]) == 1
    text = capsys.readouterr().out
    assert "ROW ID" in text and "size_mismatch" in text
    assert "b " in text and "mask is 4x4 but the image is 8x6" in text
    assert main(["manifest", "validate", out, "--no-objects"]) == 0
    assert "OK" in capsys.readouterr().out

    assert main(["manifest", "show", out, "-n", "1"]) == 0
    text = capsys.readouterr().out
    assert "2 rows" in text and "schema version 1" in text and "a.png" in text
    assert "... 1 more rows" in text


def test_validate_writes_a_report_and_samples(dirs, capsys):
    out = str(dirs / "m.parquet")
    main(["manifest", "build", "--images", str(dirs / "img"), "--masks", str(dirs / "msk"),
          "--mask-pattern", "{stem}_mask.png", "-o", out])  # fmt: skip
    capsys.readouterr()
    assert main(["manifest", "validate", out, "--report", str(dirs / "problems.csv")]) == 1
    assert "size_mismatch" in (dirs / "problems.csv").read_text()
    main(["manifest", "validate", out, "--sample", "1"])
    assert "objects checked for 1 of 2 rows" in capsys.readouterr().out


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["manifest", "show", str(tmp_path / "none.parquet")]) == 2
    assert "none.parquet" in capsys.readouterr().err
    assert main(["manifest", "validate", "http://169.254.169.254/m.parquet"]) == 2
    assert "http" in capsys.readouterr().err


def test_build_on_s3_with_flags_and_env(s3_bucket, s3_server, capsys, monkeypatch):
    put_objects(s3_server, s3_bucket, {
        "in/images/x 1.png": png(), "in/images/y.png": png(),
        "in/masks/x 1.png": png(mode="L"), "in/masks/y.png": png(mode="L"),
    })  # fmt: skip
    b = f"s3://{s3_bucket}"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # the flag supplies it
    flags = ["--endpoint-url", s3_server, "--region", "us-east-1"]
    cmd = ["manifest", "build", "--images", f"{b}/in/images/", "--masks", f"{b}/in/masks/"]
    assert main([*cmd, "-o", f"{b}/in/manifest.parquet", *flags]) == 0
    assert main(["manifest", "validate", f"{b}/in/manifest.parquet", *flags]) == 0
    assert "OK: 2 rows" in capsys.readouterr().out
    assert main(["manifest", "validate", f"{b}/in/manifest.parquet", *flags,
                 "--allowed-buckets", "another-bucket"]) == 2  # fmt: skip
    assert "allowed_buckets" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)  # and from the env alone
    assert main(["manifest", "show", f"{b}/in/manifest.parquet"]) == 0
    assert "x 1" in capsys.readouterr().out
