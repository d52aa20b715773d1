"""`batch-inpaint manifest build | validate | show`, in-process, on local dirs and moto S3."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from batch_inpaint import Manifest
from batch_inpaint.cli import main
from batch_inpaint.vocab import ExitCode
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
    assert main([*args, "--mask-pattern", "{stem}_mask.png", "-o", out]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "wrote 2 rows" in captured.out
    assert "c.png" in captured.err and "z_mask.png" in captured.err  # unpaired, named
    assert (
        main([*args, "--mask-pattern", "{stem}_mask.png", "-o", out, "--strict"])
        == ExitCode.INCOMPLETE
    )
    assert len(Manifest.read(out)) == 2

    assert main(["manifest", "validate", out]) == ExitCode.INCOMPLETE
    text = capsys.readouterr().out
    assert "ROW ID" in text and "size_mismatch" in text
    assert "b " in text and "mask is 4x4 but the image is 8x6" in text
    assert main(["manifest", "validate", out, "--no-objects"]) == ExitCode.OK
    assert "OK" in capsys.readouterr().out

    assert main(["manifest", "show", out, "-n", "1"]) == ExitCode.OK
    text = capsys.readouterr().out
    assert "2 rows" in text and "schema version 1" in text and "a.png" in text
    assert "... 1 more rows" in text


def test_validate_writes_a_report_and_samples(dirs, capsys):
    out = str(dirs / "m.parquet")
    main(["manifest", "build", "--images", str(dirs / "img"), "--masks", str(dirs / "msk"),
          "--mask-pattern", "{stem}_mask.png", "-o", out])  # fmt: skip
    capsys.readouterr()
    assert (
        main(["manifest", "validate", out, "--report", str(dirs / "problems.csv")])
        == ExitCode.INCOMPLETE
    )
    assert "size_mismatch" in (dirs / "problems.csv").read_text()
    main(["manifest", "validate", out, "--sample", "1"])
    assert "objects checked for 1 of 2 rows" in capsys.readouterr().out


def test_errors_exit_config_with_a_message(tmp_path, capsys):
    assert main(["manifest", "show", str(tmp_path / "none.parquet")]) == ExitCode.CONFIG
    assert "none.parquet" in capsys.readouterr().err
    assert main(["manifest", "validate", "http://169.254.169.254/m.parquet"]) == ExitCode.CONFIG
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
    assert main([*cmd, "-o", f"{b}/in/manifest.parquet", *flags]) == ExitCode.OK
    assert main(["manifest", "validate", f"{b}/in/manifest.parquet", *flags]) == ExitCode.OK
    assert "OK: 2 rows" in capsys.readouterr().out
    assert main(["manifest", "validate", f"{b}/in/manifest.parquet", *flags,
                 "--allowed-buckets", "another-bucket"]) == ExitCode.CONFIG  # fmt: skip
    assert "allowed_buckets" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)  # and from the env alone
    assert main(["manifest", "show", f"{b}/in/manifest.parquet"]) == ExitCode.OK
    assert "x 1" in capsys.readouterr().out


def test_a_command_module_that_fails_to_import_is_not_hidden(monkeypatch):
    import batch_inpaint.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "not_a_module"))
    with pytest.raises(ModuleNotFoundError, match="not_a_module"):
        cli.build_parser()
