"""The page's events: component values in, component values out. Each event calls a handler
(plain functions in `handlers`) and keeps the session's state in a `handlers.Sessions` keyed by
gradio's session id; what is gradio's own (updates, toasts, errors, files to download) stays here.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from batch_inpaint.errors import InpaintError
from batch_inpaint.image import codec
from batch_inpaint.vocab import Status
from batch_inpaint.web import handlers as h
from batch_inpaint.web.inputs import EDITOR_MAX_SIDE, Sample, ServeSettings, preview, thumbnail

TITLES = {
    "decode": "Not a usable image",
    "mask": "Mask problem",
    "size_mismatch": "Mask problem",
    "config": "Check the settings",
    "manifest": "Manifest problem",
    "model": "The model failed",
}


def errors_to_page(fn):
    """InpaintErrors become a gr.Error with their message; the server goes on serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InpaintError as exc:
            raise gr.Error(str(exc), title=TITLES.get(exc.kind, "Can't do that")) from None

    return wrapper


def _warn(exc: InpaintError, title: str) -> None:
    """A refused file is a warning, not an error: the page stays as it was for another try."""
    gr.Warning(str(exc), title=TITLES.get(exc.kind, title))


def _shrink(rgb: np.ndarray) -> np.ndarray:
    """A copy to show (before/after): at most EDITOR_MAX_SIDE per side; the download is full size."""
    return preview(rgb, EDITOR_MAX_SIDE, 2**62)


class ResultFiles:
    """Result PNGs for the download button; old ones are removed (gradio keeps its own copy)."""

    def __init__(self, keep_s: float = 3600.0):
        self.dir = Path(tempfile.mkdtemp(prefix="batch-inpaint-web-"))
        self.keep_s = keep_s

    def thumbnail(self, sample: Sample) -> str:
        """A small PNG of a sample for the picker (a thumbnail, not the sample's own path)."""
        path = self.dir / f"sample-{sample.name}.png"
        rgb = codec.decode_image(sample.image.read_bytes())
        path.write_bytes(codec.encode_image(thumbnail(rgb), "png"))
        return str(path)

    def save(self, name: str, data: bytes) -> str:
        now = time.time()
        for old in self.dir.glob("*/*.png"):
            try:
                if now - old.stat().st_mtime > self.keep_s:
                    old.unlink()
            except OSError:
                pass
        sub = Path(tempfile.mkdtemp(dir=self.dir))  # the file keeps its readable name
        path = sub / f"{name}.png"
        path.write_bytes(data)
        return str(path)


class PageEvents:
    """One page's events; `layout.build_app` wires each method to its components."""

    def __init__(self, inpainter: Any, settings: ServeSettings, samples: dict[str, Sample]):
        self.inpainter = inpainter
        self.settings = settings
        self.samples = samples
        self.model = inpainter.describe()
        self.sessions = h.Sessions(settings.idle_minutes * 60, settings.max_sessions)
        self.files = ResultFiles()

    # outputs: editor, mask file, before/after, image file
    def image_uploaded(self, path: str | None, request: gr.Request):
        if not path:
            return gr.update(), gr.update(), gr.update(), gr.update()
        try:
            state, editor = h.upload_image(path, self.settings)
        except InpaintError as exc:  # the file box empties; the canvas keeps what it had
            _warn(exc, "Can't use that file")
            return gr.update(), gr.update(), gr.update(), None
        self.sessions.put(request.session_hash, state)
        return editor, None, None, gr.update()

    # outputs: editor, mask file, image file
    @errors_to_page
    def sample_picked(self, name: str, request: gr.Request):
        state, editor = h.pick_sample(name, self.samples, self.settings)
        self.sessions.put(request.session_hash, state)
        return editor, None, None

    # outputs: editor, mask file
    def mask_uploaded(self, path: str | None, request: gr.Request):
        state = self.sessions.get(request.session_hash)
        if state.picture is None:
            if path:
                gr.Warning("load an image first, then its mask", title="No image yet")
            return gr.update(), None
        try:
            state, editor = h.upload_mask(path, state, self.settings)
        except InpaintError as exc:
            _warn(exc, "Can't use that mask")
            return gr.update(), None
        self.sessions.put(request.session_hash, state)
        return editor, gr.update()

    def editor_cleared(self, request: gr.Request) -> None:
        self.sessions.drop(request.session_hash)

    def session_closed(self, request: gr.Request) -> None:
        self.sessions.drop(request.session_hash)

    # outputs: before/after, download button, job YAML, row JSON, seed
    @errors_to_page
    def run(
        self,
        editor: dict | None,
        prompt: str,
        negative_prompt: str,
        steps: float,
        guidance: float,
        seed: float | None,
        random_seed: bool,
        mode: str,
        dilate: float,
        feather: float,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's own idiom
    ):
        progress(0.0, desc="preparing")
        fields = h.Fields(prompt, negative_prompt, steps, guidance, seed, random_seed, mode,
                          dilate, feather)  # fmt: skip
        state = self.sessions.get(request.session_hash)
        result, state = h.run(state, editor, fields, self.inpainter, self.settings)
        picture = state.picture
        now = self.sessions.get(request.session_hash)
        if now.picture is picture:  # not replaced by an upload during the run
            self.sessions.put(request.session_hash, replace(now, last_seed=result.seed))
        path = self.files.save(f"{picture.name}-inpainted-seed{result.seed}", result.png)
        if result.status != Status.OK.value:
            gr.Warning("the mask was empty after processing: the result is the input")
        return (
            (_shrink(picture.rgb), _shrink(result.image)),
            gr.update(value=path, visible=True),
            h.job_yaml(result.params),
            h.row_json(result.params),
            result.seed,
        )

    # outputs: status line, row JSON
    @errors_to_page
    def add(self, request: gr.Request, editor: dict | None, manifest_name: str, *fields: Any):
        """`fields`: the settings column's values, in the order of handlers.Fields."""
        state = self.sessions.get(request.session_hash)
        return h.add(state, editor, h.Fields(*fields), manifest_name, self.model, self.settings)
