"""The page's layout: which gradio components it has, where, and which event each one fires.
Gradio does the drawing, queueing, progress and uploads; `events` handles what happens."""

from __future__ import annotations

import contextlib
from typing import Any

import gradio as gr
from gradio import component_meta, processing_utils

from batch_inpaint.web import handlers as h
from batch_inpaint.web.events import SCROLL_TO_RESULT, PageEvents
from batch_inpaint.web.inputs import IMAGE_SUFFIXES, ServeSettings, find_samples

BRUSH_COLOUR = ("#ff00ff", 0.6)  # see-through, so the object stays visible under the paint
MODES = [("full: the whole image at the working size", "full"),
         ("crop: only around each painted region (large images)", "crop")]  # fmt: skip
DEFAULTS = h.Fields()


@contextlib.contextmanager
def _no_stub_file():
    """Gradio writes a .pyi stub beside the source of every component class defined; this is
    not a package of components, so nothing is written into it."""
    write_stub = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        component_meta.create_or_modify_pyi = write_stub


with _no_stub_file():

    class HeaderFirstEditor(gr.ImageEditor):
        """gr.ImageEditor handing the server its images as files, undecoded. Gradio's own
        preprocess decodes every layer the browser sends before any handler runs (a 13,000x13,000
        PNG of a few hundred KB took gigabytes); the handlers check each file's size and header
        first. A subclass, not a patched instance: gradio rebuilds a component from its class
        when an event updates it."""

        is_template = True  # drawn by the ImageEditor's own frontend

        def convert_and_format_image(self, file: Any, flatten_on_white: bool = False) -> str | None:
            if file is None:
                return None
            if isinstance(file, (bytes, bytearray, memoryview)):  # the canvas, sent as a blob
                cache = self.GRADIO_CACHE
                return processing_utils.save_bytes_to_cache(bytes(file), "layer.png", cache)
            return file.path


def _model_text(model: dict[str, Any]) -> str:
    text = f"{model['backend']}" + (f" · `{model['model']}`" if model.get("model") else "")
    if model["backend"] == "opencv":
        text += " (classical fill: it ignores the prompt, steps, guidance and seed)"
    elif model["backend"] == "lama":
        text += " (LaMa: one pass; it ignores the prompt, steps, guidance and seed)"
    elif model["backend"] == "tiny":
        text += " (random weights, for tests: the fill is noise)"
    return text


def build_app(
    inpainter: Any, settings: ServeSettings | None = None, provider: Any = None
) -> gr.Blocks:
    """The gr.Blocks page for `inpainter` (and `provider`, a MaskProvider for the Detect button;
    None: Detect says no detector is configured); call .queue() / .launch() on it."""
    settings = settings or ServeSettings()
    samples = find_samples(settings.samples_dir)
    events = PageEvents(inpainter, settings, samples, provider)
    h.release_in_background(events.sessions, every_s=min(60.0, settings.idle_minutes * 15))
    off = h.ignored_controls(events.ignores)  # controls this model ignores: shown, disabled

    def used(name: str) -> dict[str, Any]:
        if name not in off:
            return {"interactive": True}
        return {"interactive": False, "info": f"not used by {events.model['backend']}"}

    with gr.Blocks(title="batch-inpaint", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "## batch-inpaint: try the model\n"
            "1. Upload an image or pick a sample. 2. Paint over what should go (brush size, "
            "eraser and undo are in the editor's toolbar), upload a mask, or type what to find "
            "(e.g. `watermark, text`) and press **Detect**. 3. "
            + ("Press" if "prompt" in off else "Change the prompt if you like, and press")
            + " **Inpaint**.\n\n"
            f"Accepted: {settings.limits_text()}. Model: {_model_text(events.model)}. Requests "
            "wait their turn for the model; the page shows your place in the queue."
        )
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    image_file = gr.File(
                        label="Image",
                        file_types=list(IMAGE_SUFFIXES),
                        elem_id="image-upload",
                        height=110,
                    )
                    mask_file = gr.File(
                        label="Mask image (optional; white = inpaint)",
                        file_types=list(IMAGE_SUFFIXES),
                        elem_id="mask-upload",
                        height=110,
                    )
                editor = HeaderFirstEditor(
                    label="Paint over what should go",
                    elem_id="editor",
                    sources=[],  # images come in through the upload above: our decoder, our limits
                    type="filepath",
                    image_mode="RGBA",
                    format="png",
                    layers=False,
                    transforms=[],
                    brush=gr.Brush(colors=[BRUSH_COLOUR], color_mode="fixed", default_size="auto"),
                    eraser=gr.Eraser(default_size="auto"),
                    # small: the editor centres a layer the page sets (Detect) in the larger
                    # of this and the picture, so a picture-sized layer must not be smaller
                    canvas_size=(64, 64),
                    height=560,
                    buttons=["fullscreen"],
                    placeholder="Upload an image above, or pick a sample below",
                )
                with gr.Row(equal_height=True):
                    queries = gr.Textbox(
                        label="Find and mask (comma-separated)",
                        placeholder="watermark, text",
                        elem_id="detect-queries",
                        scale=3,
                    )
                    detect = gr.Button("Detect", elem_id="detect", scale=1)
                detect_message = gr.Markdown(elem_id="detect-message")
                detections = gr.Markdown(elem_id="detections")
                if samples:
                    sample_thumb = gr.Image(visible=False, type="filepath")
                    sample_name = gr.Textbox(visible=False)
                    examples = gr.Examples(
                        examples=[[events.files.thumbnail(s), n] for n, s in samples.items()],
                        inputs=[sample_thumb, sample_name],
                        label="Samples (click one)",
                        examples_per_page=len(samples),
                        visible_columns=[0],
                    )
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", value=DEFAULTS.prompt, elem_id="prompt",
                                    lines=2, **used("prompt"))  # fmt: skip
                negative_prompt = gr.Textbox(label="Negative prompt", elem_id="negative-prompt",
                                             **used("negative_prompt"))  # fmt: skip
                with gr.Row():
                    steps = gr.Slider(1, 100, value=DEFAULTS.steps, step=1, label="Steps",
                                      elem_id="steps", **used("steps"))  # fmt: skip
                    guidance = gr.Slider(0, 20, value=DEFAULTS.guidance, step=0.5,
                                         label="Guidance scale", elem_id="guidance",
                                         **used("guidance"))  # fmt: skip
                with gr.Row():
                    seed = gr.Number(label="Seed", value=DEFAULTS.seed, precision=0, minimum=0,
                                     elem_id="seed", **used("seed"))  # fmt: skip
                    random_seed = gr.Checkbox(label="Random seed", value=DEFAULTS.random_seed,
                                              elem_id="random-seed", **used("random_seed"))  # fmt: skip
                mode = gr.Radio(MODES, value=DEFAULTS.mode, label="Mode", elem_id="mode")
                with gr.Row():
                    dilate = gr.Slider(
                        0, 64, value=DEFAULTS.dilate, step=1, label="Mask dilation (px)"
                    )
                    feather = gr.Slider(0, 64, value=DEFAULTS.feather, step=1, label="Feather (px)")
                run = gr.Button("Inpaint", variant="primary", elem_id="run")
                # what went wrong (or how the run went), beside the button: no error badges
                run_message = gr.Markdown(elem_id="run-message")
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
                    label="Manifest row (JSON): the override columns that reproduce this result",
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

        # -- events: loading has its own small pool, so an upload never waits behind a run ----
        fields = [
            prompt,
            negative_prompt,
            steps,
            guidance,
            seed,
            random_seed,
            mode,
            dilate,
            feather,
        ]  # fmt: skip - in the order of handlers.Fields
        image_file.upload(
            events.image_uploaded,
            image_file,
            [editor, mask_file, slider, image_file],
            concurrency_id="load",
            concurrency_limit=4,
        )
        if samples:
            examples.load_input_event.then(
                events.sample_picked,
                sample_name,
                [editor, mask_file, image_file],
                concurrency_id="load",
            )
        for mask_event in (mask_file.upload, mask_file.clear):
            mask_event(
                events.mask_uploaded,
                mask_file,
                [editor, mask_file],
                concurrency_id="load",
                show_progress="hidden",
            )
        editor.clear(events.editor_cleared, None, None)
        run.click(
            events.run,
            [editor, *fields],
            [slider, download, job_code, row_code, seed, run_message],
            show_progress_on=[run_message, slider],  # beside the button, not on every output
            concurrency_id="model",
            concurrency_limit=1,
        ).then(None, run_message, None, js=SCROLL_TO_RESULT)
        detect.click(
            events.detect,
            [editor, queries],
            [editor, detect_message, detections],
            show_progress_on=[detect_message],
            concurrency_id="detect",
            concurrency_limit=1,
        )
        add.click(
            events.add,
            [editor, manifest_name, *fields],
            [add_status, row_code],
            concurrency_id="manifest",
            concurrency_limit=1,
        )
        demo.unload(events.session_closed)
    demo.page_events = events  # for tests and tools: the sessions it holds
    return demo
