"""The text detector that needs no download: PP-OCRv6 small det as the `rapidocr` wheel ships it
(rapidocr/models/PP-OCRv6_det_small.onnx, Apache-2.0), run with onnxruntime on the CPU, with
PaddleOCR's DB pre- and post-processing (detect/text.DBText) at rapidocr's own settings. It is
the text queries' detector when no --text-detector is given, and `--text-detector rapidocr` names
it. Only the model files are read from the installed package: nothing of rapidocr runs (its
pipeline may download models and dictionaries), so nothing here touches the network.

TextReader runs the recogniser of the same wheel (PP-OCRv6_rec_small.onnx) on a line's rotated
crop and gives the confidence of what it reads: `--text-min-confidence` keeps only lines read at
least that well (docs/masks.md has the measurement)."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from batch_inpaint.detect.text import DEFAULT_TEXT_DETECTOR, DEFAULT_THRESHOLD, DBText
from batch_inpaint.errors import ConfigError, ModelError

SHIPPED = DEFAULT_TEXT_DETECTOR  # 'rapidocr': the --text-detector value that names it
DET_FILE, REC_FILE = "PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx"
# rapidocr 3.10's Det settings (its config.yaml): the shorter side brought up to 736 px, mean and
# std 0.5, box_thresh 0.5, unclip 1.6 with the bitmap dilated; its Global.max_side_len 2000 caps
# the longer side, as it does before detection
PREPROCESS = {"limit_side_len": 736, "limit_type": "min", "max_side_limit": 2000,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # fmt: skip
REC_HEIGHT, REC_MIN_WIDTH, REC_MAX_WIDTH = 48, 320, 3200  # rapidocr's rec_img_shape 3x48x320
INSTALL = "pip install 'rapidocr==3.10.0' onnxruntime"


def is_shipped(model: Any) -> bool:
    """Whether a --text-detector value means this detector (unset, or 'rapidocr')."""
    return model is None or str(model).strip().lower() == SHIPPED


def install_problem() -> str | None:
    """Why the shipped detector can't load here (a missing package or model file), else None."""
    if importlib.util.find_spec("onnxruntime") is None:
        return f"the onnxruntime package is not installed ({INSTALL})"
    try:
        model_file(DET_FILE)
    except ModelError as exc:
        return str(exc)
    return None


def model_file(name: str) -> Path:
    """A model file inside the installed rapidocr package, found without importing it."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.origin:
        raise ModelError(f"the rapidocr package is not installed ({INSTALL})")
    path = Path(spec.origin).parent / "models" / name
    if not path.is_file():
        raise ModelError(f"{path} is missing: this rapidocr does not ship {name} ({INSTALL})")
    return path


def session(path: Path) -> Any:
    """An onnxruntime CPU session. Its threads follow OMP_NUM_THREADS when set (Ray sets it to an
    actor's CPU share), else onnxruntime's default (one per core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"could not load {path}: {type(exc).__name__}: {exc}") from exc


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rapidocr")
    except PackageNotFoundError:
        return "?"


class OnnxTextDetector(DBText):
    """Text lines from the rapidocr wheel's PP-OCRv6 small detector, through onnxruntime on the
    CPU (whatever `device` says: docs/masks.md says why not torch)."""

    name = "pp-ocr onnxruntime"
    default_threshold = DEFAULT_THRESHOLD
    bin_threshold, unclip_ratio, min_size, dilate_map = 0.3, 1.6, 3, True
    # On some pictures with large flat patches (an opencv fill's, say) the map lights up almost
    # everywhere and rapidocr returns the whole picture as one "line" (score ~0.8): a region
    # over half the picture's shorter side is dropped (docs/masks.md)
    max_line_share = 0.5

    def __init__(self, model: str | os.PathLike | None = None, **_source: Any):
        """`model`: None or 'rapidocr'; the device and storage options the other providers take
        are accepted and unused."""
        if not is_shipped(model):
            raise ConfigError(
                f"OnnxTextDetector runs the shipped model ({SHIPPED!r}), not {model!r}"
            )
        problem = install_problem()
        if problem:
            raise ModelError(f"the shipped text detector can't load: {problem}")
        self.pre = dict(PREPROCESS)
        self.path = model_file(DET_FILE)
        self.session = session(self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.model_id, self.revision = f"{SHIPPED} {_version()}: {DET_FILE}", None

    def _maps(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]
        except Exception as exc:
            raise ModelError(f"text detector failed: {type(exc).__name__}: {exc}") from exc
        return out[:, 0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": "cpu"}


class TextReader:
    """The wheel's PP-OCRv6 small recogniser: how confidently a line's crop reads as text."""

    def __init__(self) -> None:
        self.path = model_file(REC_FILE)
        self.session = session(self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.model_id = f"{SHIPPED} {_version()}: {REC_FILE}"

    def confidences(self, image: np.ndarray, quads: list[np.ndarray]) -> list[float]:
        """Per quad (4x2 corners in `image`'s pixels, RGB uint8 image): the mean probability of
        the characters read (CTC greedy decoding), 0.0 when it reads none."""
        return [self._read(_crop(image, q)) for q in quads]

    def _read(self, crop: np.ndarray | None) -> float:
        if crop is None:
            return 0.0
        h, w = crop.shape[:2]
        rw = min(REC_MAX_WIDTH, max(1, math.ceil(REC_HEIGHT * w / h)))
        x = (
            cv2.resize(np.ascontiguousarray(crop[:, :, ::-1]), (rw, REC_HEIGHT)).astype(np.float32)
            / 127.5
            - 1.0
        )
        padded = np.zeros((1, 3, REC_HEIGHT, max(rw, REC_MIN_WIDTH)), np.float32)
        padded[0, :, :, :rw] = x.transpose(2, 0, 1)
        try:
            probs = self.session.run(None, {self.input_name: padded})[0][0]
        except Exception as exc:
            raise ModelError(f"text recogniser failed: {type(exc).__name__}: {exc}") from exc
        best = probs.argmax(axis=1)
        keep = best != 0  # 0: CTC's blank
        keep[1:] &= best[1:] != best[:-1]  # a repeat is one character
        return float(probs.max(axis=1)[keep].mean()) if keep.any() else 0.0


def _crop(image: np.ndarray, quad: np.ndarray) -> np.ndarray | None:
    """The line's rotated rectangle cut out upright (PaddleOCR's get_rotate_crop_image): a tall
    crop is turned 90 degrees, as vertical lines are read."""
    pts = _ordered(np.asarray(quad, np.float32))
    w = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    h = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    if w < 2 or h < 2:
        return None
    dst = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    crop = cv2.warpPerspective(image, cv2.getPerspectiveTransform(pts, dst), (w, h),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)  # fmt: skip
    return np.ascontiguousarray(np.rot90(crop)) if h / w >= 1.5 else crop


def _ordered(pts: np.ndarray) -> np.ndarray:
    """Corners as top-left, top-right, bottom-right, bottom-left."""
    s, d = pts.sum(axis=1), np.diff(pts, axis=1)[:, 0]
    return np.float32([pts[s.argmin()], pts[d.argmin()], pts[s.argmax()], pts[d.argmax()]])
