"""The shipped text detector with its real weights (PP-OCRv6 small det from the rapidocr wheel,
onnxruntime, no network): a caption rendered on a bundled photo is found in one tight box, a
photo without text gives nothing, the recogniser drops what it can't read, and the `detect`
command and a `run --detect text --verify` job use it when no --text-detector is given."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFont

from batch_inpaint.cli import main
from batch_inpaint.detect.base import box_iou
from batch_inpaint.detect.provider import MaskProvider
from batch_inpaint.detect.shipped import OnnxTextDetector, install_problem, is_shipped
from batch_inpaint.manifest import Manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
CAPTION = "Holiday 2026, photo by A. Person"


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


def captioned(name: str = "coffee.png") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The bundled photo with a white caption near its bottom; the caption's pixel box."""
    im = Image.open(EXAMPLES / name).convert("RGB")
    font = ImageFont.load_default(size=28)
    xy = (20, im.height - 50)
    ImageDraw.Draw(im).text(xy, CAPTION, font=font, fill=(255, 255, 255))
    box = ImageDraw.Draw(im).textbbox(xy, CAPTION, font=font)
    return np.asarray(im), box


@pytest.fixture(scope="module")
def shipped() -> MaskProvider:
    return MaskProvider.load(queries=["text"])  # no text_detector: the shipped one


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_unset_and_rapidocr_name_the_shipped_detector(shipped):
    assert install_problem() is None
    assert is_shipped(None) and is_shipped(" RapidOCR ") and not is_shipped("org/model")
    text = shipped.detector.text
    assert isinstance(text, OnnxTextDetector) and shipped.detector.open_vocab is None
    assert text.describe()["model"].endswith("PP-OCRv6_det_small.onnx")
    assert isinstance(MaskProvider.load(text_detector="rapidocr", queries=["caption"]).detector.text,
                      OnnxTextDetector)  # fmt: skip


def test_a_caption_on_a_bundled_photo_is_found_in_one_tight_box(shipped):
    image, box = captioned()
    (res,) = shipped.masks([image], [["text"]])
    assert len(res.detections) == 1, res.detections
    d = res.detections[0]
    assert d.label == "text" and d.score >= 0.5
    assert box_iou(d.box, box) >= 0.6, (d.box, box)
    assert res.mask.sum() < 1.6 * (box[2] - box[0]) * (box[3] - box[1])  # the line, not more


def test_a_photo_without_text_gives_nothing(shipped):
    for name in ("astronaut.png", "rocket.jpg"):
        (res,) = shipped.masks([photo(name)], [["text"]])
        assert res.detections == [] and not res.found and not res.mask.any(), name


def test_same_boxes_as_rapidocrs_own_pipeline(shipped):
    """The DB ends done here match rapidocr's at its settings (its quads' bounding boxes)."""
    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Global.use_cls": False, "Global.use_rec": False,
                              "Global.log_level": "error"})  # fmt: skip
    image, _ = captioned("chelsea.png")
    theirs = engine(image[:, :, ::-1].copy(), use_det=True, use_cls=False, use_rec=False)
    want = [(q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()) for q in theirs.boxes]
    got = [d.box for d in shipped.detector.detect([image], [["text"]])[0]]
    assert len(got) == len(want) >= 1
    for g in got:
        assert max(box_iou(g, w) for w in want) >= 0.9, (got, want)


def test_min_confidence_keeps_what_the_recogniser_reads(shipped):
    """On the cat photo the detector takes the eyes for text; the recogniser can't read them,
    and it reads the caption."""
    cat = photo("chelsea.png")
    assert len(shipped.masks([cat], [["text"]])[0].detections) == 2  # the eyes
    strict = MaskProvider.load(queries=["text"], text_min_confidence=0.8)
    image, box = captioned("chelsea.png")
    eyes, caption = strict.masks([cat, image], [["text"], ["text"]])
    assert eyes.detections == []
    assert len(caption.detections) == 1 and box_iou(caption.detections[0].box, box) >= 0.6
    assert strict.describe()["detector"]["text"]["min_confidence"] == 0.8


@pytest.fixture
def caption_manifest(tmp_path) -> Path:
    """Two rows, id and image only: a captioned photo and a photo with no text."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "caption.png").write_bytes(_png(captioned()[0]))
    (src / "clean.png").write_bytes(_png(photo("astronaut.png")))
    table = pa.table({"id": ["caption", "clean"], "image": ["caption.png", "clean.png"]})
    pq.write_table(table, src / "manifest.parquet")  # a user's: no mask column
    return src / "manifest.parquet"


def test_detect_command_uses_the_shipped_detector(caption_manifest, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["detect", "--manifest", str(caption_manifest), "--output", str(out),
               "--detect", "text", "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "1 with a mask from detections, 1 with nothing found" in printed
    rows = {r["id"]: r for r in Manifest.read(str(out / "manifest.parquet")).table.to_pylist()}
    (d,) = rows["caption"]["detections"]
    assert d["label"] == "text" and box_iou(d["box"], captioned()[1]) >= 0.6
    assert rows["caption"]["mask"] and Path(rows["caption"]["mask"]).is_file()
    assert rows["clean"]["detections"] == [] and rows["clean"]["mask"] is None
    assert rows["clean"]["detect_note"].startswith("nothing found for text")


@pytest.mark.slow
def test_run_detect_text_verify_with_opencv(ray_local, caption_manifest, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--manifest", str(caption_manifest), "--output", str(out),
               "--backend", "opencv", "--detect", "text", "--verify"])  # fmt: skip
    # default CPU shares: detect, verify and model actors and a read task fit the 2 test CPUs
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = {r["id"]: r for r in pq.read_table(out / "metadata").to_pylist()}
    cap, clean = rows["caption"], rows["clean"]
    assert cap["status"] == "ok" and cap["mask_used"] and len(cap["detections"]) == 1
    assert cap["residual_score"] is not None and cap["residual_score"] < 0.5, cap["note"]
    assert clean["status"] == "skipped" and clean["detections"] == []
    assert clean["residual_score"] is None


def test_the_drivers_check_needs_no_folder_for_the_shipped_detector(tmp_path):
    from batch_inpaint.config import JobConfig
    from batch_inpaint.job.driver.detect_checks import check_detection

    for value in (None, "rapidocr"):
        cfg = JobConfig(manifest=str(tmp_path / "m.parquet"), output=str(tmp_path / "out"),
                        detect=["text", "caption"], text_detector=value)  # fmt: skip
        check_detection(cfg, ["text", "caption"])  # no folder, no network: nothing to refuse
