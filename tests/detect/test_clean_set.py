"""The synthetic cleaning set (bench/clean_set.py): deterministic, its ground truth covers what
was drawn, and its measures give the known answers for an oracle detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batch_inpaint.detect import BoxesDetector, Detection, MaskProvider, image_digest
from bench.clean_set import build_clean_set, detection_rows, inpainting_rows, load_set


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean-set")
    build_clean_set(out, seed=3)
    return out


def test_the_set_is_the_same_bytes_every_time(clean_set, tmp_path):
    again = tmp_path / "again"
    build_clean_set(again, seed=3)
    files = sorted(p.relative_to(clean_set) for p in clean_set.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "images"]) == 8  # every bundled photo
    for f in files:
        if f.suffix != ".parquet":
            assert (clean_set / f).read_bytes() == (again / f).read_bytes(), f
    other = tmp_path / "other"
    build_clean_set(other, seed=4)
    assert (other / "images/astronaut.png").read_bytes() != (
        again / "images/astronaut.png"
    ).read_bytes()


def test_ground_truth_covers_everything_drawn(clean_set):
    rows = load_set(clean_set)
    for r in rows:
        changed = (r["dirty"] != r["clean_rgb"]).any(axis=-1)
        assert changed.any() and not (changed & ~r["gt_mask"]).any(), r["id"]
        objects = np.load(clean_set / "masks" / f"{r['id']}.objects.npz")
        union = np.zeros_like(r["gt_mask"])
        for g in r["gt"]:
            m = objects[g["kind"]]
            x0, y0, x1, y1 = (int(v) for v in g["box"])
            assert m.any() and not m[:, :x0].any() and not m[:y0].any(), (r["id"], g["kind"])
            assert not m[:, x1:].any() and not m[y1:].any() and m[y0:y1, x0:x1].any()
            union |= m
        assert (union == r["gt_mask"]).all()
        assert {g["query"] for g in r["gt"]} == {"watermark", "text", "logo"}


def test_an_oracle_detector_scores_full_recall_and_inpainting_beats_the_dirty_image(clean_set):
    rows = load_set(clean_set)[:3]
    given = {image_digest(r["dirty"]): [Detection(g["query"], 1.0, tuple(g["box"]))
                                        for g in r["gt"]] for r in rows}  # fmt: skip
    got = {
        x["query"]: x for x in detection_rows(rows, MaskProvider(BoxesDetector(per_image=given)))
    }
    for q in ("watermark", "text", "logo"):
        assert got[q]["recall"] == 1.0 and got[q]["mean_best_iou"] == pytest.approx(1.0)
        assert got[q]["precision"] == 1.0 and got[q]["objects"] == 3
    assert got["(mask pixels)"]["recall"] == 1.0  # boxes cover every drawn pixel
    notes: list[str] = []
    errors = inpainting_rows(rows, ["opencv", "lama"], 2, "cpu", None, notes)
    by = {(e["backend"], e["mask"]): e for e in errors}
    assert by[("opencv", "gt")]["mae_in_mask"] < by[("none (dirty)", "-")]["mae_in_mask"]
    assert by[("opencv", "detected")]["images"] == 3
    assert any("lama skipped" in n for n in notes)  # no weights given: said, not failed


def test_the_text_set_is_the_same_every_time_and_its_boxes_hold_the_lines():
    """bench/clean_text.py: same seed, same pixels; 1-3 lines per row inside the picture, each
    box the pixels its line changed; an oracle's boxes score recall and precision 1."""
    from bench.clean_text import _kept, build, setting_rows

    rows = build(seed=1, synthetic=2, variants=1)
    again = build(seed=1, synthetic=2, variants=1)
    assert [r["id"] for r in rows] == [r["id"] for r in again]
    for r, a in zip(rows, again, strict=True):
        assert (r["dirty"] == a["dirty"]).all() and r["lines"] == a["lines"]
        h, w = r["dirty"].shape[:2]
        assert 1 <= len(r["lines"]) <= 3
        changed = (r["dirty"] != r["photo"]).any(axis=-1)
        for ln in r["lines"]:
            x0, y0, x1, y1 = (int(v) for v in ln["box"])
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert 12 <= ln["size"] <= 72 and 0.4 <= ln["opacity"] <= 1 and abs(ln["angle"]) <= 15
            assert changed[y0:y1, x0:x1].any()
        r["candidates"] = [(ln["box"], 0.9, 1.0) for ln in r["lines"]]  # an oracle detector
    assert _kept(rows[0], 0.5, 0.5) == [ln["box"] for ln in rows[0]["lines"]]
    best = setting_rows(rows)[0]
    assert best["recall"] == 1.0 and best["precision"] == 1.0 and best["boxes_on_distractors"] == 0
