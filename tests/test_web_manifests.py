"""The manifests the web page writes (web/manifests.py): names that stay under the root, rows
that read back and validate, a sample's own URI kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.errors import ConfigError, MaskError
from batch_inpaint.image.masks import mask_from_image
from batch_inpaint.manifest.manifest import Manifest
from batch_inpaint.web import handlers as h
from batch_inpaint.web import inputs
from batch_inpaint.web.manifests import add_to_manifest, manifest_dir
from tests.test_web import EXAMPLES, box_mask, options

PICTURE = inputs.Picture(
    rgb=np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8), name="noise"
)


@pytest.mark.parametrize(
    "name", ["../up", "a/b", "..", ".hidden", "", " ", "x" * 65, "a\\b", "/abs", "a\x00b"]
)
def test_manifest_names_cannot_leave_the_root(tmp_path, name):
    with pytest.raises(ConfigError, match="is not allowed"):
        manifest_dir(tmp_path, name)


def test_manifest_names_are_tidied(tmp_path):
    assert manifest_dir(tmp_path, " my masks ") == (tmp_path / "my-masks").resolve()
    assert manifest_dir(tmp_path, "run.2.parquet") == (tmp_path / "run.2").resolve()


def test_add_to_manifest_writes_rows_that_read_back(tmp_path):
    picture = PICTURE
    root = tmp_path / "manifests"
    opts, seed = options("grass", None, 30, 7.5, 9, False, "full", 0, 0)
    params = h.reproduction_params(opts, seed, {"backend": "opencv"})
    path, row, added = add_to_manifest(root, "hand made", picture, box_mask(), params)
    assert added and path == (root / "hand-made" / "manifest.parquet").resolve()
    # a second mask on the same image, then the first again (already there: not added)
    add_to_manifest(root, "hand made", picture, box_mask(box=(0, 10, 0, 10)), params)
    before = path.stat().st_mtime_ns
    again = add_to_manifest(root, "hand made", picture, box_mask(), params)
    assert again == (path, row, False) and path.stat().st_mtime_ns == before

    m = Manifest.read(str(path))
    rows = list(m)
    assert len(rows) == 2 and rows[0]["id"] == row["id"]
    r = rows[0]
    assert r["image"] == rows[1]["image"]  # one copy of the uploaded image
    assert (r["prompt"], r["seed"], r["num_inference_steps"]) == ("grass", 9, 30)
    folder = path.parent
    image = np.asarray(Image.open(folder / r["image"]))
    assert (image == picture.rgb).all()  # the upload, saved lossless
    assert (mask_from_image((folder / r["mask"]).read_bytes(), (96, 64)) == box_mask()).all()
    report = m.validate(check_objects=True, decode=True)
    assert report.ok, str(report)


def test_add_to_manifest_keeps_a_samples_own_uri(tmp_path):
    samples = inputs.find_samples(EXAMPLES / "images")
    pic = inputs.load_sample("chelsea", samples, inputs.ServeSettings())
    opts, seed = options("fur", None, 30, 7.5, 1, False, "crop", 2, 2)
    params = h.reproduction_params(opts, seed, {"backend": "opencv"})
    mask = np.zeros(pic.rgb.shape[:2], bool)
    mask[100:140, 150:200] = True
    path, row, _ = add_to_manifest(tmp_path, "cats", pic, mask, params)
    assert row["image"] == str(samples["chelsea"].image)
    assert not (path.parent / "images").exists()
    assert Manifest.read(str(path)).validate(check_objects=True).ok


def test_add_to_manifest_refuses_an_empty_mask(tmp_path):
    with pytest.raises(MaskError, match="empty"):
        add_to_manifest(tmp_path, "x", PICTURE, np.zeros((64, 96), bool), {})
