"""Serving the page: gradio's queue (one model, requests wait their turn) and server settings.
The layout is in `layout`, its events in `events`, what they do in `handlers`."""

from __future__ import annotations

from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.web.inputs import ServeSettings

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


def build_app(inpainter: Any, settings: ServeSettings | None = None, provider: Any = None):
    """The gr.Blocks page for `inpainter` and the Detect button's `provider` (layout.build_app)."""
    _import_gradio()
    from batch_inpaint.web.layout import build_app as build

    return build(inpainter, settings, provider)


def launch(
    inpainter: Any,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
    quiet: bool = False,
    provider: Any = None,
):
    """Queue (one model, requests wait their turn) and serve the page; returns the Blocks.
    `provider`: a detect.provider.MaskProvider for the Detect button, loaded once, or None."""
    gr = _import_gradio()
    settings = settings or ServeSettings()
    demo = build_app(inpainter, settings, provider)
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=settings.max_upload_bytes,
        allowed_paths=[],  # nothing outside gradio's own upload/cache folders is served
        show_error=True,
        prevent_thread_lock=True,
        # gradio's own lines end with "set `share=True` in `launch()`": a public tunnel, which
        # this page must not open (it writes manifests); the one line below says where it is.
        quiet=True,
        theme=gr.themes.Soft(),
        css=CSS,
        footer_links=[],
    )
    if not quiet:
        print(f"serve: the page is at {demo.local_url} (Ctrl-C stops the server)", flush=True)
    if block:
        demo.block_thread()
    return demo
