"""`batch-inpaint manifest validate` on shards (job/io/shard_check.py): Parquet written with
`datasets` and tars written with `webdataset`, each row checked as a manifest row would be."""

from __future__ import annotations

import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from batch_inpaint import Manifest
from batch_inpaint.cli import main
from batch_inpaint.job.io.shard_check import validate_shards
from batch_inpaint.vocab import ExitCode


def encoded(w: int, h: int, seed: int, mode: str = "RGB") -> bytes:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    if mode == "L":
        pixels = np.where(pixels > 200, 255, 0).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def hf_shards(tmp_path):
    import datasets

    folder = tmp_path / "hf"
    folder.mkdir()
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "mask": datasets.Image()})  # fmt: skip
    rows = [
        ("a", encoded(16, 12, 1), encoded(16, 12, 2, "L")),
        ("b", b"not an image", encoded(16, 12, 3, "L")),
        ("c", encoded(16, 12, 4), encoded(8, 8, 5, "L")),  # mask of another size
        ("a", encoded(16, 12, 6), None),  # a duplicate id, and no mask
    ]
    for shard, part in enumerate((rows[:2], rows[2:])):
        data = {"id": [r[0] for r in part],
                "image": [{"bytes": r[1], "path": None} for r in part],
                "mask": [None if r[2] is None else {"bytes": r[2], "path": None} for r in part]}  # fmt: skip
        datasets.Dataset.from_dict(data, features=features).to_parquet(
            str(folder / f"train-{shard}.parquet")
        )
    return folder


def test_parquet_shards_every_problem_named_by_shard_and_row(hf_shards):
    report = validate_shards(Manifest.from_parquet_dataset(str(hf_shards)))
    assert report.rows == 4
    found = {(p.row_id, p.kind) for p in report.problems}
    assert found == {("a", "duplicate_id"), ("b", "decode"), ("c", "size_mismatch"),
                     ("a", "no_mask")}  # fmt: skip
    by_kind = {p.kind: p.message for p in report.problems}
    assert "shard train-0.parquet row 1 image: not a readable image" in by_kind["decode"]
    assert "mask is 8x8 but the image is 16x12" in by_kind["size_mismatch"]
    # with queries to detect, a row without a mask is fine
    detected = validate_shards(Manifest.from_parquet_dataset(str(hf_shards)), queries=["text"])
    assert "no_mask" not in detected.counts()


def test_webdataset_shards_through_the_command(tmp_path, capsys):
    folder = tmp_path / "wds"
    folder.mkdir()
    with wds.TarWriter(str(folder / "00000.tar"), encoder=False) as tar:
        tar.write({"__key__": "k0", "png": encoded(16, 12, 1), "seg.png": encoded(16, 12, 2, "L")})
        tar.write({"__key__": "k1", "txt": b"no image here", "seg.png": encoded(16, 12, 3, "L")})
    with wds.TarWriter(str(folder / "00001.tar"), encoder=False) as tar:
        tar.write({"__key__": "k2", "jpg": encoded(16, 12, 4), "seg.png": encoded(16, 12, 5, "L")})
    (folder / "00002.tar").write_bytes((folder / "00001.tar").read_bytes()[:1600])  # cut short

    rc = main(
        ["manifest", "validate", f"{folder}/{{00000..00002}}.tar", "--mask-member", "seg.png"]
    )
    said = capsys.readouterr().out
    assert rc == ExitCode.INCOMPLETE
    assert "2 problems" in said
    assert "shard 00000.tar row 1: no image member" in said
    assert "00002.tar: truncated tar" in said

    good = ["manifest", "validate", f"{folder}/00001.tar", "--mask-member", "seg.png"]
    assert main(good) == ExitCode.OK
    assert capsys.readouterr().out.startswith("OK: 1 rows, no problems")
    # the default mask member is not there: every row says so
    assert main(["manifest", "validate", f"{folder}/00001.tar"]) == ExitCode.INCOMPLETE
    assert "no mask (column or member 'mask.png')" in capsys.readouterr().out
