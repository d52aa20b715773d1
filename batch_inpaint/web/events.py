"""The page's events: component values in, component values out. Each event calls a handler
(plain functions in `handlers`) and keeps the session's state in a `handlers.Sessions` keyed by
gradio's session id; what is gradio's own (updates, toasts, files to download) stays here.

A person's mistake (an InpaintError) is shown in the message area beside the button pressed, or
as a toast for a refused file, and logged as one line; it never reaches gradio as an error, which
would mark every output of the event (the Seed field among them) with a red "Error" badge and
print a traceback. Anything else is a bug: gradio shows it and the server logs its traceback.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from batch_inpaint.errors import ConfigError, InpaintError
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


OK_MARK, ERROR_MARK = "✓", "⚠️"  # the first character of a message: the page's JS reads it
# After a run what it says comes into view: a mistake's message under Inpaint (it may be below
# the fold); after a success the message and the result (below the editor) together when the
# window holds both, else the result.
SCROLL_TO_RESULT = """(message) => {
    const said = document.querySelector("#run-message");
    const result = document.querySelector("#result");
    if (!message || !said) return [];
    let target = said, block = "nearest";
    if (message.startsWith("✓") && result) {
        const gap = result.getBoundingClientRect().top - said.getBoundingClientRect().top;
        target = gap >= 0 && gap < window.innerHeight / 2 ? said : result;
        block = "start";
    }
    target.scrollIntoView({behavior: "smooth", block: block});
    return [];
}"""
MASK_RESIZED = ("The mask is not the image's size: it was resized to it (nearest), and the job "
                "config says `mask_resize: true`, so a job with this mask does the same.")  # fmt: skip


def _escape(text: str) -> str:
    """Plain text for a Markdown component: file names keep their underscores and stars."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", text)


def error_message(event: str, exc: InpaintError) -> str:
    """What the message area shows for a mistake (and the one log line it costs)."""
    text = h.user_error(event, exc)
    title = TITLES.get(exc.kind, "Can't do that")
    return f"{ERROR_MARK} **{title}:** {_escape(text)}"


def _warn(exc: InpaintError, title: str, event: str) -> None:
    """A refused file is a warning, not an error: the page stays as it was for another try."""
    gr.Warning(h.user_error(event, exc), title=TITLES.get(exc.kind, title))


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

    def __init__(
        self,
        inpainter: Any,
        settings: ServeSettings,
        samples: dict[str, Sample],
        provider: Any = None,
    ):
        self.inpainter = inpainter
        self.provider = provider  # detect.provider.MaskProvider, or None: Detect says so
        self.settings = settings
        self.samples = samples
        self.model = inpainter.describe()
        self.ignores = tuple(getattr(getattr(inpainter, "spec", None), "ignores", ()))
        self.sessions = h.Sessions(settings.idle_minutes * 60, settings.max_sessions)
        self.files = ResultFiles()

    # outputs: editor, mask file, before/after, image file
    def image_uploaded(self, path: str | None, request: gr.Request):
        if not path:
            return gr.update(), gr.update(), gr.update(), gr.update()
        try:
            state, editor = h.upload_image(path, self.settings)
        except InpaintError as exc:  # the file box empties; the canvas keeps what it had
            _warn(exc, "Can't use that file", "upload")
            return gr.update(), gr.update(), gr.update(), None
        self.sessions.put(request.session_hash, state)
        return editor, None, None, gr.update()

    # outputs: editor, mask file, image file
    def sample_picked(self, name: str, request: gr.Request):
        try:
            state, editor = h.pick_sample(name, self.samples, self.settings)
        except InpaintError as exc:
            _warn(exc, "Can't use that sample", "sample")
            return gr.update(), gr.update(), gr.update()
        self.sessions.put(request.session_hash, state)
        return editor, None, None

    # outputs: editor, mask file
    def mask_uploaded(self, path: str | None, request: gr.Request):
        state = self.sessions.get(request.session_hash)
        if state.picture is None:
            if path:
                text = h.user_error("mask", ConfigError("load an image first, then its mask"))
                gr.Warning(text, title="No image yet")
            return gr.update(), None
        try:
            state, editor = h.upload_mask(path, state, self.settings)
        except InpaintError as exc:
            _warn(exc, "Can't use that mask", "mask")
            return gr.update(), None
        self.sessions.put(request.session_hash, state)
        if state.mask_resized:
            gr.Info(MASK_RESIZED.replace("`", ""), title="Mask resized")
        return editor, gr.update()

    def editor_cleared(self, request: gr.Request) -> None:
        self.sessions.drop(request.session_hash)

    def session_closed(self, request: gr.Request) -> None:
        self.sessions.drop(request.session_hash)

    # outputs: before/after, download button, job YAML, row JSON, seed, message
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
        started = time.monotonic()
        state = self.sessions.get(request.session_hash)
        try:
            result, state = h.run(state, editor, fields, self.inpainter, self.settings)
        except InpaintError as exc:  # the page keeps its last result; the message says why
            return (*(gr.update(),) * 5, error_message("run", exc))
        picture = state.picture
        now = self.sessions.get(request.session_hash)
        if now.picture is picture:  # not replaced by an upload during the run
            self.sessions.put(request.session_hash, replace(now, last_seed=result.seed))
        seeded = "seed" not in self.ignores
        name = f"{picture.name}-inpainted" + (f"-seed{result.seed}" if seeded else "")
        path = self.files.save(name, result.png)
        secs = time.monotonic() - started
        message = (
            f"{OK_MARK} Done in {secs:.2f} s" if secs < 10 else f"{OK_MARK} Done in {secs:.0f} s"
        )
        message += f", seed {result.seed}." if seeded else "."
        if result.status != Status.OK.value:
            message += " The mask was empty after processing: the result is the input."
        if state.mask_resized:
            message += f" {MASK_RESIZED}"
        return (
            (_shrink(picture.rgb), _shrink(result.image)),
            gr.update(value=path, visible=True),
            h.job_yaml(result.params),
            h.row_json(result.params),
            result.seed if seeded else gr.update(),
            message,
        )

    # outputs: editor, message, detections table
    def detect(self, editor: dict | None, queries: str, request: gr.Request):
        from batch_inpaint.web import detection

        state = self.sessions.get(request.session_hash)
        try:
            found = detection.detect(state, editor, queries, self.provider, self.settings)
        except InpaintError as exc:
            return gr.update(), error_message("detect", exc), ""
        table = detection.detections_markdown(found.detections)
        if found.editor is None:
            return gr.update(), f"{ERROR_MARK} {_escape(found.message)}", table
        return found.editor, f"{OK_MARK} {_escape(found.message)}", table

    # outputs: status line, row JSON
    def add(self, request: gr.Request, editor: dict | None, manifest_name: str, *fields: Any):
        """`fields`: the settings column's values, in the order of handlers.Fields."""
        state = self.sessions.get(request.session_hash)
        try:
            return h.add(state, editor, h.Fields(*fields), manifest_name, self.model,
                         self.settings, self.ignores)  # fmt: skip
        except InpaintError as exc:
            return error_message("add", exc), gr.update()
