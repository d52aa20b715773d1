"""The page's "Detect" button, as plain functions (no gradio): run the server's MaskProvider on the
picture and put what it found on the editor as a painted layer, so the person can erase or add to
it by hand before inpainting. `events` calls these; `layout` wires the button."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError
from batch_inpaint.web.handlers import PageState, editor_value, painted_mask
from batch_inpaint.web.inputs import (
    EDITOR_MAX_SIDE,
    ServeSettings,
    mask_from_layers,
    preview_size,
)

# The brush's colour and opacity (layout.BRUSH_COLOUR), so found and painted strokes look alike.
LAYER_RGBA = (255, 0, 255, 153)
NO_DETECTOR = (
    "no detector is configured on this server: start it with `batch-inpaint serve --detector "
    "MODEL` (Grounding DINO: a Hub id, folder or s3:// prefix) and/or `--text-detector MODEL` "
    "(`--text-detector rapidocr`: the text detector shipped with the package, offline) to use "
    "Detect; painting the mask by hand works as before"
)
# The serve flags that name a model, as MaskProvider.load's keyword arguments.
MODEL_FLAGS = ("detector", "detector_revision", "text_detector", "text_detector_revision",
               "segmenter", "segmenter_revision")  # fmt: skip


@dataclass(frozen=True)
class Detected:
    """What Detect gives the page: the editor's new value (None: leave it as it is), the mask now
    painted (bool, the picture's size), the detections (best first) and the message to show."""

    editor: dict | None
    mask: np.ndarray | None
    detections: list
    message: str


def load_provider(
    *,
    detector: str | os.PathLike | None = None,
    text_detector: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str = "auto",
    **options: Any,
):
    """The server's MaskProvider, loaded once. Only the models named are loaded (an unnamed one
    is never a download of the default), except the text detector shipped with the package: it
    needs no download, so text queries work on every page (`text_detector="none"` turns it off)."""
    from batch_inpaint.detect.provider import MaskProvider

    if detector is None and str(text_detector) == "none":
        return None  # both turned off: Detect says no detector is configured
    return MaskProvider.load(
        detector=detector if detector is not None else "none",
        text_detector=text_detector if text_detector is not None else "rapidocr",
        threshold=threshold,
        device=device,
        **options,
    )


def detect(
    state: PageState,
    editor: dict | None,
    queries: str | None,
    provider: Any,
    settings: ServeSettings,
) -> Detected:
    """Find what `queries` ('watermark, text') name in the picture; the editor gets a layer with
    what was found joined to what was already painted. ConfigError says what to do first."""
    from batch_inpaint.detect.base import parse_queries

    if provider is None:
        raise ConfigError(NO_DETECTOR)
    wanted = parse_queries(queries or "", "queries")
    if state.picture is None or not editor or editor.get("background") is None:
        painted_mask(state, editor, settings)  # raises: says why there is no picture
    if not wanted:
        raise ConfigError("type what to find first, e.g. 'watermark, text', then press Detect")
    picture = state.picture
    result = provider.masks([picture.rgb], [wanted])[0]
    asked = ", ".join(wanted)
    if not result.found:
        t = provider.threshold
        at = f" at threshold {t:g}" if t is not None else ""
        return Detected(None, None, [], f"Nothing found for {asked}{at}: the mask is as it was. "
                        "Try other words, or paint over it by hand.")  # fmt: skip
    shown = preview_size(*picture.size, EDITOR_MAX_SIDE, settings.max_upload_bytes)
    layer = _painted_layer(editor, shown, settings)
    layer |= _fit(result.mask, shown)
    value = editor_value(picture, state.uploaded_mask, settings)
    value["layers"] = [_rgba(layer)]  # the composite stays the picture: an erased part goes
    mask = painted_mask(state, value, settings)
    found = "; ".join(f"{d.label} {d.score:.2f}" for d in result.detections)
    n = len(result.detections)
    message = (f"Found {n} for {asked}: {found}. They are on the editor as a painted layer: "
               "erase or paint to adjust, then Inpaint.")  # fmt: skip
    return Detected(value, mask, list(result.detections), message)


def detections_markdown(detections: list) -> str:
    """A small table of the detections (label, score, box) for the page."""
    if not detections:
        return ""
    rows = ["| label | score | box (x0, y0, x1, y1) |", "|---|---|---|"]
    for d in detections:
        box = ", ".join(f"{v:.0f}" for v in d.box)
        rows.append(f"| {_cell(d.label)} | {d.score:.2f} | {box} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", text)


def _painted_layer(editor: dict, shown: tuple[int, int], settings: ServeSettings) -> np.ndarray:
    """What is already painted on the editor's layers, at the preview's size (w, h)."""
    return mask_from_layers(editor.get("layers"), shown, settings)  # files checked first


def _fit(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from batch_inpaint.image.masks import fit_mask

    return fit_mask(mask, size, resize=True)


def _rgba(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((*mask.shape, 4), np.uint8)
    out[mask] = LAYER_RGBA
    return out
