"""The page's Detect button without a browser: a provider with known boxes fills the editor's
mask layer where the boxes are (and keeps what was painted), the tiny Grounding DINO checkpoint
runs the real path, and no detector / nothing found / no queries are said plainly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.detect.base import BoxesDetector, Detection
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.errors import ConfigError
from batch_inpaint.models import load_inpainter
from batch_inpaint.web import detection, inputs
from batch_inpaint.web import handlers as h


@pytest.fixture
def settings(tmp_path) -> inputs.ServeSettings:
    return inputs.ServeSettings(max_upload_mb=1, max_pixels=1_000_000, manifest_root=tmp_path / "m")


@pytest.fixture
def uploaded(tmp_path, settings):
    """(state, editor value) after uploading a 64x96 grey picture."""
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(buf, "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(buf.getvalue())
    return h.upload_image(str(path), settings)


def boxes_provider(*detections: Detection) -> MaskProvider:
    return MaskProvider(BoxesDetector(detections))


def test_known_boxes_fill_the_mask_layer_and_the_run_uses_it(uploaded, settings):
    state, editor = uploaded
    provider = boxes_provider(Detection("watermark", 0.9, (60, 40, 90, 60)),
                              Detection("logo", 0.8, (0, 0, 10, 10)))  # fmt: skip
    found = detection.detect(state, editor, "Watermark, text", provider, settings)
    expected = np.zeros((64, 96), bool)
    expected[40:60, 60:90] = True  # only the queried label's box
    assert (found.mask == expected).all()
    assert [(d.label, d.score) for d in found.detections] == [("watermark", 0.9)]
    assert found.message.startswith("Found 1 for watermark, text: watermark 0.90")
    layer = found.editor["layers"][0]
    assert layer.shape == (64, 96, 4) and ((layer[..., 3] > 0) == expected).all()
    assert (found.editor["composite"] == 90).all()  # an erased part of the layer goes
    table = detection.detections_markdown(found.detections)
    assert "| watermark | 0.90 | 60, 40, 90, 60 |" in table

    # the layer is the editor's mask like a painted one: Inpaint changes only its pixels
    result, _ = h.run(state, found.editor, h.Fields(), load_inpainter("opencv"), settings)
    assert (result.image[~expected] == 90).all()


def test_detect_keeps_what_was_painted_and_can_be_erased_by_hand(uploaded, settings):
    state, editor = uploaded
    painted = np.zeros((64, 96, 4), np.uint8)
    painted[0:8, 0:8, 3] = 255
    editor = {**editor, "layers": [painted]}
    provider = boxes_provider(Detection("watermark", 0.9, (60, 40, 90, 60)))
    found = detection.detect(state, editor, "watermark", provider, settings)
    assert found.mask.sum() == 64 + 20 * 30  # the stroke and the box, together
    erased = found.editor["layers"][0].copy()
    erased[40:50, :, 3] = 0  # the eraser, on half of the box
    mask = h.painted_mask(state, {**found.editor, "layers": [erased]}, settings)
    assert mask.sum() == 64 + 10 * 30


def test_nothing_found_leaves_the_mask_and_says_so(uploaded, settings):
    state, editor = uploaded
    provider = MaskProvider(BoxesDetector([Detection("logo", 0.2, (0, 0, 10, 10))]), threshold=0.5)
    found = detection.detect(state, editor, "logo", provider, settings)
    assert found.editor is None and found.mask is None and found.detections == []
    assert found.message.startswith("Nothing found for logo at threshold 0.5")


def test_no_detector_no_picture_and_no_queries_say_what_to_do(uploaded, settings):
    state, editor = uploaded
    with pytest.raises(ConfigError, match="no detector is configured.*--detector"):
        detection.detect(state, editor, "watermark", None, settings)
    provider = boxes_provider()
    with pytest.raises(ConfigError, match="upload an image or pick a sample first"):
        detection.detect(h.PageState(), None, "watermark", provider, settings)
    with pytest.raises(ConfigError, match="type what to find first"):
        detection.detect(state, editor, " , ", provider, settings)
    shipped = detection.load_provider()  # no model flag: only the text detector in the package
    assert shipped.detector.open_vocab is None and shipped.detector.text is not None
    assert detection.load_provider(text_detector="none") is None  # both off: Detect says so


def test_serve_checks_the_detect_threshold_before_loading_anything():
    from batch_inpaint.cli import build_parser, main
    from batch_inpaint.cli.serve import _load_provider
    from batch_inpaint.vocab import ExitCode

    assert main(["serve", "--backend", "opencv", "--threshold", "2"]) == ExitCode.CONFIG
    plain = _load_provider(build_parser().parse_args(["serve", "--backend", "opencv"]))
    assert plain.detector.open_vocab is None  # nothing named, nothing downloaded
    assert type(plain.detector.text).__name__ == "OnnxTextDetector"  # text: the shipped one


def test_the_page_finds_text_with_no_model_flag_offline(tmp_path, settings):
    """serve with no detector flag: the Detect button finds a caption with the shipped weights."""
    from pathlib import Path

    import cv2

    from batch_inpaint.cli import build_parser
    from batch_inpaint.cli.serve import _load_provider

    repo = Path(__file__).resolve().parents[1]
    photo = np.array(Image.open(repo / "examples/images/astronaut.png").convert("RGB"))
    cv2.putText(
        photo, "SAMPLE CAPTION", (40, 470), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 255), 3
    )
    provider = _load_provider(build_parser().parse_args(["serve", "--backend", "opencv"]))
    found = provider.masks([np.ascontiguousarray(photo)], [["text"]])[0]
    assert found.detections and found.mask[440:480, 40:400].any()


def test_the_tiny_grounding_dino_runs_the_real_path(tmp_path, uploaded, settings):
    from batch_inpaint.cli import build_parser, main
    from batch_inpaint.cli.serve import _load_provider

    model = tmp_path / "detector"
    assert main(["make-tiny-model", "--kind", "detector", str(model)]) == 0
    # loaded as `serve` loads it; random weights: threshold 0 keeps the best boxes, so
    # something is always found
    args = build_parser().parse_args(["serve", "--backend", "opencv", "--device", "cpu",
                                      "--detector", str(model), "--threshold", "0"])  # fmt: skip
    provider = _load_provider(args)
    assert provider.detector.open_vocab is not None  # the model named, and text's shipped one
    state, editor = uploaded
    found = detection.detect(state, editor, "watermark", provider, settings)
    assert 1 <= len(found.detections) <= provider.max_detections and found.mask.any()
    assert {d.label for d in found.detections} == {"watermark"}
    again = provider.masks([state.picture.rgb], [["watermark"]])[0]
    assert (found.mask == again.mask).all()  # the editor's mask is the provider's


@pytest.mark.slow  # starts a gradio server (a few seconds)
def test_the_served_detect_button_fills_the_editor(tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from batch_inpaint.web.app import launch

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(image)
    provider = boxes_provider(Detection("watermark", 0.9, (60, 40, 90, 60)))
    settings = inputs.ServeSettings(manifest_root=tmp_path / "m")
    demo = launch(load_inpainter("opencv"), settings, port=None, block=False, quiet=True,
                  provider=provider)  # fmt: skip
    try:
        client = Client(demo.local_url, verbose=False)
        client.predict(handle_file(str(image)), api_name="/image_uploaded")
        editor = {"background": handle_file(str(image)), "layers": [], "composite": None}
        value, message, table = client.predict(editor, "watermark", api_name="/detect")
        assert message.startswith("✓ Found 1") and "| watermark | 0.90 |" in table
        alpha = np.asarray(Image.open(value["layers"][0]))[..., 3]
        assert ((alpha > 0).sum(), alpha[40:60, 60:90].min()) == (600, 153)
        _, message, table = client.predict(editor, "cat", api_name="/detect")
        assert message.startswith("⚠️ Nothing found for cat") and table == ""
    finally:
        demo.close()
