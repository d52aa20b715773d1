"""The page: gradio components wired to the handlers. Gradio does the drawing, queueing, progress
and uploads; this module only decides what goes where and turns errors into messages."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from batch_inpaint.errors import ConfigError, InpaintError
from batch_inpaint.web import handlers as h

# The editor shows (and the browser paints on) at most this many pixels per side; the mask is
# scaled back to the full image. Keeps a 25-megapixel photo responsive in a browser tab.
EDITOR_MAX_SIDE = 2048
BRUSH_COLOUR = ("#ff00ff", 0.6)  # see-through, so the object stays visible under the paint
MODES = [("full: the whole image at the working size", "full"),
         ("crop: only around each painted region (large images)", "crop")]  # fmt: skip
CSS = """
#result-download {max-width: 18rem}
footer {visibility: hidden}
"""


def _import_gradio():
    try:
        import gradio as gr
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "the web page needs gradio: pip install 'batch-inpaint[serve]' "
            f"(or `make setup`); import failed: {exc}"
        ) from None
    return gr


def _errors_to_page(fn):
    """InpaintErrors become a gr.Error with their message; the server goes on serving."""
    gr = _import_gradio()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InpaintError as exc:
            raise gr.Error(str(exc), title=_TITLES.get(exc.kind, "Can't do that")) from None

    return wrapper


_TITLES = {
    "decode": "Not a usable image",
    "mask": "Mask problem",
    "size_mismatch": "Mask problem",
    "config": "Check the settings",
    "manifest": "Manifest problem",
    "model": "The model failed",
}


def _shrink(rgb: np.ndarray) -> np.ndarray:
    """A copy to show (before/after): at most EDITOR_MAX_SIDE per side; the download is full size."""
    return h.preview(rgb, EDITOR_MAX_SIDE, 2**62)


class _Results:
    """Result PNGs for the download button; old ones are removed (gradio keeps its own copy)."""

    def __init__(self, keep_s: float = 3600.0):
        self.dir = Path(tempfile.mkdtemp(prefix="batch-inpaint-web-"))
        self.keep_s = keep_s

    def thumbnail(self, sample: h.Sample) -> str:
        """A small PNG of a sample for the picker (a thumbnail, not the sample's own path)."""
        path = self.dir / f"sample-{sample.name}.png"
        rgb = h.codec.decode_image(sample.image.read_bytes())
        path.write_bytes(h.codec.encode_image(h.thumbnail(rgb), "png"))
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


def build_app(inpainter: Any, settings: h.ServeSettings | None = None):
    """The gr.Blocks page for `inpainter`; call .queue() / .launch() on it (see `launch`)."""
    gr = _import_gradio()
    settings = settings or h.ServeSettings()
    samples = h.find_samples(settings.samples_dir)
    results = _Results()
    model = inpainter.describe()
    model_text = f"{model['backend']}" + (f" · `{model['model']}`" if model.get("model") else "")
    if model["backend"] == "opencv":
        model_text += " (classical fill: it ignores the prompt, steps, guidance and seed)"
    elif model["backend"] == "tiny":
        model_text += " (random weights, for tests: the fill is noise)"

    # -- handlers (gradio-facing: components in, component values out) ------------------------
    def _editor_value(picture: h.Picture, uploaded_mask: np.ndarray | None) -> dict:
        tinted = h.tint(picture.rgb, uploaded_mask)
        shown = h.preview(tinted, EDITOR_MAX_SIDE, settings.max_upload_bytes)
        return {"background": shown, "layers": [], "composite": shown}

    def fresh(picture: h.Picture) -> tuple:
        state = h.PageState(picture=picture)
        return _editor_value(picture, None), state, None, None

    def on_image_upload(path: str | None, state: h.PageState):
        # A refused upload is a warning, not an error: the file box is emptied for another try
        # and whatever was on the canvas stays.
        if not path:
            return gr.update(), state, gr.update(), gr.update(), gr.update()
        try:
            picture = h.load_upload(path, settings, name=Path(path).name)
        except InpaintError as exc:
            gr.Warning(str(exc), title=_TITLES.get(exc.kind, "Can't use that file"))
            return gr.update(), state, gr.update(), gr.update(), None
        return (*fresh(picture), gr.update())

    @_errors_to_page
    def on_sample(name: str):
        editor, state, mask_file, _ = fresh(h.load_sample(name, samples, settings))
        return editor, state, mask_file, None

    def on_mask_upload(path: str | None, state: h.PageState):
        if state.picture is None:
            if path:
                gr.Warning("load an image first, then its mask", title="No image yet")
            return gr.update(), state, None
        try:
            mask = h.load_mask_upload(path, state.picture, settings) if path else None
        except InpaintError as exc:
            gr.Warning(str(exc), title=_TITLES.get(exc.kind, "Can't use that mask"))
            return gr.update(), state, None
        state = dataclasses.replace(state, uploaded_mask=mask)
        return _editor_value(state.picture, mask), state, gr.update()

    def on_editor_clear(state: h.PageState):
        return h.PageState()

    def current_mask(state: h.PageState, editor: dict | None) -> np.ndarray:
        if state.picture is None or not editor or editor.get("background") is None:
            raise ConfigError("upload an image or pick a sample first")
        mask = h.mask_from_layers(editor.get("layers"), state.picture.size)
        if state.uploaded_mask is not None:
            mask |= state.uploaded_mask
        return mask

    @_errors_to_page
    def on_run(
        state: h.PageState,
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
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's own idiom
    ):
        progress(0.0, desc="preparing")
        mask = current_mask(state, editor)
        options, used = h.make_options(
            prompt, negative_prompt, steps, guidance, seed, random_seed, mode, dilate, feather
        )
        picture = state.picture
        result = h.run_inpaint(picture, mask, inpainter, options, used)
        path = results.save(f"{picture.name}-inpainted-seed{used}", result.png)
        state = dataclasses.replace(state, last_seed=used)
        if result.status != "ok":
            gr.Warning("the mask was empty after processing: the result is the input")
        return (
            (_shrink(picture.rgb), _shrink(result.image)),
            gr.update(value=path, visible=True),
            h.job_yaml(result.params),
            h.row_json(result.params),
            used,
            state,
        )

    @_errors_to_page
    def on_add(
        state: h.PageState,
        editor: dict | None,
        manifest_name: str,
        prompt: str,
        negative_prompt: str,
        steps: float,
        guidance: float,
        seed: float | None,
        random_seed: bool,
        mode: str,
        dilate: float,
        feather: float,
    ):
        mask = current_mask(state, editor)
        # With "random seed" ticked, the row keeps the seed of the last run (the result seen).
        row_seed = state.last_seed if random_seed else seed
        options, used = h.make_options(
            prompt,
            negative_prompt,
            steps,
            guidance,
            row_seed if row_seed is not None else None,
            row_seed is None,
            mode,
            dilate,
            feather,
        )
        params = h.reproduction_params(options, used, model)
        path, row = h.add_to_manifest(
            settings.manifest_root, manifest_name, state.picture, mask, params
        )
        shown = path.relative_to(Path(settings.manifest_root).resolve().parent)
        return f"Added row `{row['id']}` to `{shown}`.", h.row_json(params, row)

    # -- layout ---------------------------------------------------------------------------------
    with gr.Blocks(title="batch-inpaint", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "## batch-inpaint: try the model\n"
            "1. Upload an image or pick a sample. 2. Paint over what should go (brush size, "
            "eraser and undo are in the editor's toolbar), or upload a mask. 3. Change the prompt "
            "if you like, and press **Inpaint**.\n\n"
            f"Accepted: {settings.limits_text()}. Model: {model_text}. Requests wait their turn "
            "for the model; the page shows your place in the queue."
        )
        state = gr.State(h.PageState())
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    image_file = gr.File(
                        label="Image",
                        file_types=list(h.IMAGE_SUFFIXES),
                        elem_id="image-upload",
                        height=110,
                    )
                    mask_file = gr.File(
                        label="Mask image (optional; white = inpaint)",
                        file_types=list(h.IMAGE_SUFFIXES),
                        elem_id="mask-upload",
                        height=110,
                    )
                editor = gr.ImageEditor(
                    label="Paint over what should go",
                    elem_id="editor",
                    sources=[],  # images come in through the upload above: our decoder, our limits
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    layers=False,
                    transforms=[],
                    brush=gr.Brush(colors=[BRUSH_COLOUR], color_mode="fixed", default_size="auto"),
                    eraser=gr.Eraser(default_size="auto"),
                    canvas_size=(768, 512),
                    height=560,
                    buttons=["fullscreen"],
                    placeholder="Upload an image above, or pick a sample below",
                )
                if samples:
                    sample_thumb = gr.Image(visible=False, type="filepath")
                    sample_name = gr.Textbox(visible=False)
                    examples = gr.Examples(
                        examples=[[results.thumbnail(s), name] for name, s in samples.items()],
                        inputs=[sample_thumb, sample_name],
                        label="Samples (click one)",
                        examples_per_page=len(samples),
                        visible_columns=[0],
                    )
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", value="background", elem_id="prompt", lines=2)
                negative_prompt = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=50, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(
                        0, 20, value=7.5, step=0.5, label="Guidance scale", elem_id="guidance"
                    )
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
                    random_seed = gr.Checkbox(
                        label="Random seed", value=True, elem_id="random-seed"
                    )
                mode = gr.Radio(MODES, value="full", label="Mode", elem_id="mode")
                with gr.Row():
                    dilate = gr.Slider(0, 64, value=0, step=1, label="Mask dilation (px)")
                    feather = gr.Slider(0, 64, value=0, step=1, label="Feather (px)")
                run = gr.Button("Inpaint", variant="primary", elem_id="run")
        with gr.Row():
            with gr.Column(scale=3):
                slider = gr.ImageSlider(
                    label="Before / after",
                    elem_id="result",
                    format="png",
                    type="numpy",
                    interactive=False,
                    max_height=640,
                )
                download = gr.DownloadButton(
                    "Download result (PNG)", visible=False, elem_id="result-download"
                )
            with gr.Column(scale=2):
                job_code = gr.Code(
                    label="Job config (YAML): paste into a job's config file",
                    language="yaml",
                    elem_id="job-yaml",
                    interactive=False,
                )
                row_code = gr.Code(
                    label="Manifest row (JSON): the seed that reproduces this result",
                    language="json",
                    elem_id="row-json",
                    interactive=False,
                )
                with gr.Group():
                    manifest_name = gr.Textbox(
                        label=f"Manifest name (saved under {settings.manifest_root}/)",
                        value="my-masks",
                        elem_id="manifest-name",
                    )
                    add = gr.Button("Add to manifest", elem_id="add")
                add_status = gr.Markdown(elem_id="add-status")

        # -- events -----------------------------------------------------------------------------
        params = [
            prompt,
            negative_prompt,
            steps,
            guidance,
            seed,
            random_seed,
            mode,
            dilate,
            feather,
        ]
        image_file.upload(
            on_image_upload,
            [image_file, state],
            [editor, state, mask_file, slider, image_file],
            concurrency_id="load",
            concurrency_limit=4,
        )
        if samples:
            examples.load_input_event.then(
                on_sample,
                [sample_name],
                [editor, state, mask_file, image_file],
                concurrency_id="load",
            )
        mask_events = dict(concurrency_id="load", show_progress="hidden")
        mask_file.upload(
            on_mask_upload, [mask_file, state], [editor, state, mask_file], **mask_events
        )
        mask_file.clear(
            on_mask_upload, [mask_file, state], [editor, state, mask_file], **mask_events
        )
        editor.clear(on_editor_clear, state, state)
        run.click(
            on_run,
            [state, editor, *params],
            [slider, download, job_code, row_code, seed, state],
            concurrency_id="model",
            concurrency_limit=1,
        )
        add.click(
            on_add,
            [state, editor, manifest_name, *params],
            [add_status, row_code],
            concurrency_id="manifest",
            concurrency_limit=1,
        )
    return demo


def launch(
    inpainter: Any,
    settings: h.ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
    quiet: bool = False,
):
    """Queue (one model, requests wait their turn) and serve the page; returns the Blocks."""
    gr = _import_gradio()
    settings = settings or h.ServeSettings()
    demo = build_app(inpainter, settings)
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=settings.max_upload_bytes,
        allowed_paths=[],  # nothing outside gradio's own upload/cache folders is served
        show_error=True,
        prevent_thread_lock=not block,
        quiet=quiet,
        theme=gr.themes.Soft(),
        css=CSS,
        footer_links=[],
    )
    return demo
