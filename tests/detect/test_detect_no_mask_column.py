"""`batch-inpaint detect` on a manifest of only `id, image`: images without masks are what detect
is for, so the missing mask column is not an error when there are queries (issue 25, defect 1)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from batch_inpaint.cli import main
from batch_inpaint.manifest import Manifest
from batch_inpaint.vocab import ExitCode
from tests.detect.conftest import photo


def _write(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(photo(40, 56, i)).save(buf, "PNG")
        (src / f"{i}.png").write_bytes(buf.getvalue())
    table = pa.table({"id": ["a", "b"], "image": ["0.png", "1.png"]})

    pq.write_table(table, src / "manifest.parquet")
    return src / "manifest.parquet"


def test_detect_takes_a_manifest_without_a_mask_column(tmp_path, tiny_detect_models, capsys):
    manifest = _write(tmp_path)
    out = tmp_path / "out"
    rc = main(["detect", "--manifest", str(manifest), "--output", str(out), "--detect", "logo",
               "--detector", tiny_detect_models["detector"], "--text-detector", "none",
               "--device", "cpu", "--threshold", "0", "--max-detections", "1"])  # fmt: skip
    printed = capsys.readouterr()
    assert rc == ExitCode.OK, printed.err
    assert "2 rows: 2 with a mask from detections" in printed.out
    m = Manifest.read(str(out / "manifest.parquet"))
    assert [r["id"] for r in m] == ["a", "b"]
    assert all(r["mask"] and np.asarray(Image.open(r["mask"])).any() for r in m)
    assert m.validate(decode=True).ok


def test_detect_without_queries_or_mask_column_says_what_to_give(tmp_path, tiny_detect_models,
                                                                   capsys):  # fmt: skip
    manifest = _write(tmp_path)
    rc = main(["detect", "--manifest", str(manifest), "--output", str(tmp_path / "out"),
               "--detector", tiny_detect_models["detector"], "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == ExitCode.CONFIG
    assert "nothing to detect" in err and "--detect" in err
    assert not (tmp_path / "out").exists()


def test_manifest_build_detect_then_detect(tmp_path, tiny_detect_models, capsys):
    """Issue 25, item 7: a folder of images without masks -> `manifest build --detect` -> a
    manifest whose rows carry their queries, which validate accepts and detect takes as it is."""
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        Image.fromarray(photo(40, 56, i)).save(src / f"p{i}.png")
    manifest = tmp_path / "m" / "manifest.parquet"
    assert main(["manifest", "build", "--images", str(src), "--detect", "text, logo",
                 "-o", str(manifest)]) == ExitCode.OK  # fmt: skip
    m = Manifest.read(str(manifest))
    assert [(r["id"], r["detect"]) for r in m] == [(f"p{i}", "text,logo") for i in range(3)]
    assert "mask" not in m.table.column_names
    assert main(["manifest", "validate", str(manifest)]) == ExitCode.OK
    out = tmp_path / "det"
    rc = main(["detect", "--manifest", str(manifest), "--output", str(out), "--detector",
               tiny_detect_models["detector"], "--text-detector", "none", "--device", "cpu",
               "--threshold", "0", "--max-detections", "1"])  # fmt: skip
    assert rc == ExitCode.OK and "3 rows: 3 with a mask from detections" in capsys.readouterr().out
    assert main(["manifest", "build", "--images", str(src), "--detect", " , ",
                 "-o", str(tmp_path / "x.parquet")]) == ExitCode.CONFIG  # fmt: skip
