"""The mask providers on their tiny random checkpoints: loading (folder, s3://, refusals),
per-image results that do not depend on the batch, boxes in input pixels, masks from boxes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from batch_inpaint.detect import (
    BoxesDetector,
    Detection,
    RoutedDetector,
    image_digest,
    mask_from_detections,
    parse_queries,
)
from batch_inpaint.errors import ConfigError
from batch_inpaint.image import masks as M
from batch_inpaint.params import MaskOptions
from tests.detect.conftest import photo, same


def test_queries_are_parsed_once_for_every_provider():
    assert parse_queries(" Watermark, text ,,logo. mark, text") == [
        "watermark",
        "text",
        "logo mark",
    ]
    assert parse_queries(["A  Logo"]) == ["a logo"]
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_queries(3)


def test_detector_finds_boxes_per_image_independent_of_the_batch(tiny_detector):
    a, b, c = photo(101, 157, 0), photo(64, 64, 1), photo(120, 90, 2)
    alone = tiny_detector.detect([a], [["watermark", "logo"]], 0.0, max_detections=5)[0]
    batch = tiny_detector.detect(
        [b, a, c, a], [["text"], ["watermark", "logo"], ["logo"], ["watermark", "logo"]], 0.0,
        max_detections=5,
    )  # fmt: skip
    assert len(alone) == 5 and {d.label for d in alone} <= {"watermark", "logo"}
    assert same(alone, batch[1]) and same(alone, batch[3])
    assert all(d.label == "logo" for d in batch[2]) and all(d.label == "text" for d in batch[0])
    assert [d.score for d in alone] == sorted((d.score for d in alone), reverse=True)


def test_detector_boxes_are_the_models_boxes_in_input_pixels(tiny_detector):
    """An odd size: the best detection's box is the model's normalised box times (w, h)."""
    import torch

    h, w = 101, 157
    img = photo(h, w, 3)
    best = tiny_detector.detect([img], [["logo"]], 0.0, max_detections=1)[0][0]
    enc = tiny_detector.processor(images=[img], text=[["logo"]], return_tensors="pt")
    with torch.inference_mode():
        out = tiny_detector.model(**enc)
    probs = out.logits[0].sigmoid()
    span = [i for i, t in enumerate(enc["input_ids"][0].tolist()) if t not in
            (tiny_detector._dot, *tiny_detector._special)]  # fmt: skip
    q = int(probs[:, span].max(dim=1).values.argmax())
    cx, cy, bw, bh = out.pred_boxes[0, q].tolist()
    want = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
    want = [min(max(v, 0.0), lim) for v, lim in zip(want, (w, h, w, h), strict=True)]
    assert np.allclose(best.box, want, atol=1e-3)
    assert 0 <= best.box[0] < best.box[2] <= w and 0 <= best.box[1] < best.box[3] <= h


def test_text_detector_working_size_and_db_boxes_map_to_input_pixels(tiny_text_detector):
    det = tiny_text_detector
    assert det.working_size(101, 157) == (96, 128)  # the tiny checkpoint's limit: 128 px
    assert det.working_size(20, 20) == (32, 32)
    prob = np.zeros((96, 128), np.float32)
    prob[30:50, 20:100] = 0.9  # one text line in map pixels
    (box, score), = det.boxes_from_map(prob, (157, 101), 0.6)  # fmt: skip
    sx, sy = 157 / 128, 101 / 96
    assert score == pytest.approx(0.9, abs=0.02)
    assert box[0] <= 20 * sx and box[1] <= 30 * sy and box[2] >= 100 * sx and box[3] >= 50 * sy
    grow = 20 * 80 * 1.5 / (2 * (20 + 80)) + 2  # DB's unclip distance, plus rounding
    assert box[0] >= (20 - grow) * sx and box[2] <= (100 + grow) * sx
    assert det.boxes_from_map(prob, (157, 101), 0.95) == []  # below the box threshold


def test_text_detector_per_image_results_and_labels(tiny_text_detector):
    a, b = photo(101, 157, 0), photo(300, 200, 1)
    alone = tiny_text_detector.detect([a], [["text"]], 0.0)[0]
    both = tiny_text_detector.detect([b, a], [["caption", "text"], ["text"]], 0.0)
    assert alone and same(alone, both[1])
    assert {d.label for d in both[0]} == {"caption", "text"}  # every text query gets the boxes
    for d in alone:
        assert 0 <= d.box[0] < d.box[2] <= 157 and 0 <= d.box[1] < d.box[3] <= 101


def test_segmenter_gives_one_mask_per_box_independent_of_the_batch(tiny_segmenter):
    a, b = photo(101, 157, 0), photo(80, 60, 1)
    boxes = [[10.0, 10.0, 80.0, 60.0], [90.0, 20.0, 150.0, 95.0]]
    alone = tiny_segmenter.segment([a], [boxes])[0]
    both = tiny_segmenter.segment([b, a, b], [[[0.0, 0.0, 30.0, 30.0]], boxes, []])
    assert [m.shape for m in alone] == [(101, 157)] * 2 and alone[0].dtype == bool
    assert len(both[0]) == 1 and both[2] == []
    assert all((x == y).mean() > 0.999 for x, y in zip(alone, both[1], strict=True))


def test_masks_from_boxes_match_mask_from_boxes_and_dilate_like_finish_mask():
    dets = [Detection("logo", 0.9, (3.5, 4.0, 20.2, 11.0)), Detection("text", 0.5, (30, 2, 41, 9))]
    size = (50, 17)
    want = M.mask_from_boxes([list(d.box) for d in dets], size)
    assert (mask_from_detections(dets, size) == want).all()
    grown = M.finish_mask(want, MaskOptions(dilate=3))[0] > 0
    assert (mask_from_detections(dets, size, dilate_px=3) == grown).all()
    seg = [np.zeros((17, 50), bool), np.zeros((17, 50), bool)]
    seg[0][5, 5] = seg[1][10, 40] = True
    got = mask_from_detections(dets, size, segments=seg)
    assert got.sum() == 2 and got[5, 5] and got[10, 40]
    seg[1][:] = False  # the segmenter missed the second one: its box stands in
    got = mask_from_detections(dets, size, segments=seg)
    assert (got == (M.mask_from_boxes([list(dets[1].box)], size) | seg[0])).all()
    assert not mask_from_detections([], size).any()


def test_boxes_detector_returns_given_boxes_per_image():
    a, b = photo(40, 60, 0), photo(40, 60, 1)
    given = {image_digest(a): [Detection("logo", 0.8, (5, 5, 100, 20)),
                               Detection("text", 0.4, (0, 0, 10, 10))]}  # fmt: skip
    det = BoxesDetector(per_image=given)
    ra, rb = det.detect([a, b], [["logo", "text"], ["logo"]], 0.5)
    assert ra == [Detection("logo", 0.8, (5.0, 5.0, 60.0, 20.0))] and rb == []  # clipped to w


def test_routed_detector_sends_text_queries_to_the_text_provider():
    img = photo(40, 60, 0)
    objects = BoxesDetector([Detection("logo", 0.9, (1, 1, 9, 9)),
                             Detection("text", 0.9, (2, 2, 8, 8))])  # fmt: skip
    text = BoxesDetector([Detection("text", 0.7, (20, 20, 50, 30))])
    got = RoutedDetector(objects, text).detect([img], [["logo", "text"]])[0]
    assert [(d.label, d.box) for d in got] == [("logo", (1.0, 1.0, 9.0, 9.0)),
                                               ("text", (20.0, 20.0, 50.0, 30.0))]  # fmt: skip
    only_objects = RoutedDetector(objects, None).detect([img], [["text"]])[0]
    assert [d.box for d in only_objects] == [(2.0, 2.0, 8.0, 8.0)]
    only_text = RoutedDetector(None, text)  # alone, the text side takes the threshold asked for
    assert only_text.detect([img], [["text"]], 0.8) == [[]]
    assert len(only_text.detect([img], [["text"]], 0.6)[0]) == 1


def test_bad_inputs_are_refused_with_the_reason(tiny_detector):
    with pytest.raises(ConfigError, match="one query list per image"):
        tiny_detector.detect([photo(20, 20, 0)], [])
    with pytest.raises(ConfigError, match="RGB uint8"):
        tiny_detector.detect([np.zeros((20, 20), np.uint8)], [["logo"]])
    with pytest.raises(ConfigError, match=r"threshold must be in \[0, 1\]"):
        tiny_detector.detect([photo(20, 20, 0)], [["logo"]], 1.5)
    assert tiny_detector.detect([photo(20, 20, 0)], [[]]) == [[]]  # no queries: nothing found


@pytest.mark.parametrize("kind,cls", [("detector", "GroundingDinoDetector"),
                                      ("text-detector", "PPOCRTextDetector"),
                                      ("segmenter", "SamSegmenter")])  # fmt: skip
def test_pickled_weights_are_refused(tiny_detect_models, tmp_path, kind, cls):
    import torch
    from safetensors.torch import load_file

    import batch_inpaint.detect as D

    folder = tmp_path / kind
    shutil.copytree(tiny_detect_models[kind], folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="only safetensors weights are loaded"):
        getattr(D, cls)(str(folder), device="cpu")


def test_a_checkpoint_of_another_kind_is_refused(tiny_detect_models):
    from batch_inpaint.detect import GroundingDinoDetector, PPOCRTextDetector

    with pytest.raises(ConfigError, match="'sam' checkpoint"):
        GroundingDinoDetector(tiny_detect_models["segmenter"], device="cpu")
    with pytest.raises(ConfigError, match="grounding-dino"):
        PPOCRTextDetector(tiny_detect_models["detector"], device="cpu")
    with pytest.raises(ConfigError, match="no such directory"):
        GroundingDinoDetector("/nowhere/at/all", device="cpu")


def test_models_load_from_s3_like_the_inpainting_models(
    tiny_detect_models, tiny_detector, s3_bucket, s3_storage_options, tmp_path
):
    from batch_inpaint.detect import GroundingDinoDetector, PPOCRTextDetector, SamSegmenter
    from batch_inpaint.storage import Storage

    storage = Storage(s3_storage_options)
    for kind, folder in tiny_detect_models.items():
        for f in Path(folder).iterdir():
            storage.write_bytes(f"s3://{s3_bucket}/models/{kind}/{f.name}", f.read_bytes())
    common = dict(device="cpu", storage=storage, cache_dir=tmp_path / "cache")
    det = GroundingDinoDetector(f"s3://{s3_bucket}/models/detector", **common)
    img = photo(64, 96, 5)
    assert same(det.detect([img], [["logo"]], 0.0, max_detections=3)[0],
                tiny_detector.detect([img], [["logo"]], 0.0, max_detections=3)[0])  # fmt: skip
    assert det.model_id == f"s3://{s3_bucket}/models/detector"
    text = PPOCRTextDetector(f"s3://{s3_bucket}/models/text-detector", **common)
    assert text.pre["limit_side_len"] == 128  # the checkpoint's preprocessor_config.json
    sam = SamSegmenter(f"s3://{s3_bucket}/models/segmenter", **common)
    assert sam.segment([img], [[[1.0, 1.0, 30.0, 30.0]]])[0][0].shape == (64, 96)
