"""What the web page does, as plain functions: no gradio here, so each is testable on its own.

Each page event has a function that takes values (the session's PageState, the editor's files,
the settings the person chose) and returns values, or raises an InpaintError whose message can be
shown to the person at the page as it is. `layout` wires them to the components.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from batch_inpaint.config import KEYS, job_settings
from batch_inpaint.errors import ConfigError, InpaintError, MaskError
from batch_inpaint.image import codec
from batch_inpaint.params import (
    GenerationParams,
    GeometryOptions,
    InpaintOptions,
    MaskOptions,
    row_overrides,
)
from batch_inpaint.vocab import MaskConcern
from batch_inpaint.web.inputs import (
    EDITOR_MAX_SIDE,
    Picture,
    Sample,
    ServeSettings,
    load_mask_upload,
    load_sample,
    load_upload,
    mask_from_layers,
    preview,
    tint,
)
from batch_inpaint.web.manifests import add_to_manifest

SEED_LIMIT = 2**31  # seeds the page draws itself; GenerationParams takes up to 2**63
# The page's controls (Fields names) for each GenerationParams field a backend may ignore.
CONTROLS = {"prompt": ("prompt",), "negative_prompt": ("negative_prompt",),
            "num_inference_steps": ("steps",), "guidance_scale": ("guidance",),
            "seed": ("seed", "random_seed")}  # fmt: skip
log = logging.getLogger("batch_inpaint.web")


@dataclass(frozen=True)
class PageState:
    """What the server keeps for one browser session (see Sessions)."""

    picture: Picture | None = None
    uploaded_mask: np.ndarray | None = None
    last_seed: int | None = None
    mask_resized: bool = False  # the uploaded mask had another size: the exports say mask_resize


@dataclass(frozen=True)
class Fields:
    """The page's settings column as the components give them; the defaults are the page's."""

    prompt: str = "background"
    negative_prompt: str | None = None
    steps: float = 50
    guidance: float = 7.5
    seed: float | None = 0
    random_seed: bool = True
    mode: str = "full"
    dilate: float = 0
    feather: float = 0


@dataclass(frozen=True)
class RunResult:
    image: np.ndarray  # RGB uint8, the input's size
    png: bytes
    seed: int
    status: str  # ok | skipped (an empty mask after finishing)
    params: dict[str, Any]  # what reproduces this result (see reproduction_params)


class Sessions:
    """Each browser session's PageState, by session id. A session unused for `idle_s` seconds
    lets go of its picture and mask, and at most `max_sessions` are held (the least recently
    used goes first), so what the page holds is bounded whoever connects."""

    def __init__(
        self, idle_s: float, max_sessions: int, clock: Callable[[], float] = time.monotonic
    ):
        self.idle_s = float(idle_s)
        self.max_sessions = int(max_sessions)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: OrderedDict[str, tuple[float, PageState]] = OrderedDict()  # oldest use first

    def get(self, key: str) -> PageState:
        """The session's state (an empty one if it holds none), counted as a use."""
        with self._lock:
            self._release_idle()
            entry = self._held.get(key)
            if entry is None:
                return PageState()
            self._held[key] = (self._clock(), entry[1])
            self._held.move_to_end(key)
            return entry[1]

    def put(self, key: str, state: PageState) -> None:
        with self._lock:
            self._release_idle()
            self._held.pop(key, None)
            if state.picture is not None:  # nothing else is worth holding
                self._held[key] = (self._clock(), state)
            while len(self._held) > self.max_sessions:
                self._held.popitem(last=False)

    def drop(self, key: str) -> None:
        """Forget the session now (its tab was closed)."""
        with self._lock:
            self._held.pop(key, None)

    def release_idle(self) -> int:
        """Let go of every session unused for idle_s; returns how many."""
        with self._lock:
            return self._release_idle()

    def _release_idle(self) -> int:
        cutoff = self._clock() - self.idle_s
        released = 0
        while self._held and next(iter(self._held.values()))[0] <= cutoff:
            self._held.popitem(last=False)
            released += 1
        return released

    def __len__(self) -> int:
        return len(self._held)


def release_in_background(sessions: Sessions, every_s: float) -> threading.Thread:
    """A daemon thread that lets idle sessions go while nobody uses the page (every use does it
    too); it ends once `sessions` is gone."""
    ref = weakref.ref(sessions)

    def loop() -> None:
        while True:
            time.sleep(every_s)
            held = ref()
            if held is None:
                return
            held.release_idle()
            del held

    thread = threading.Thread(target=loop, name="batch-inpaint-web-sessions", daemon=True)
    thread.start()
    return thread


def user_error(event: str, exc: InpaintError) -> str:
    """A mistake of the person at the page: one line on the server's log (no traceback: nothing
    is wrong with the server), and the message to show them."""
    log.warning("web %s: %s (%s)", event, exc, exc.kind)
    return str(exc)


# -- parameters -------------------------------------------------------------------------------
def ignored_controls(ignores: tuple[str, ...]) -> frozenset[str]:
    """The page's controls that do nothing for a model whose spec ignores `ignores`."""
    return frozenset(c for field in ignores for c in CONTROLS.get(field, ()))


def make_options(fields: Fields, mask_resize: bool = False) -> tuple[InpaintOptions, int]:
    """The page's fields as InpaintOptions and the seed to use; ConfigError names a bad field.
    `mask_resize`: the uploaded mask was resized to the image, as a job does with mask_resize."""
    f = fields
    if f.random_seed or f.seed is None or f.seed == "":
        used = secrets.randbelow(SEED_LIMIT)
    else:
        used = _int(f.seed, "seed")
        if used < 0:
            raise ConfigError(f"seed must be >= 0, got {used} (or tick 'random seed')")
    generation = GenerationParams(
        prompt=str(f.prompt or "").strip(),
        negative_prompt=(str(f.negative_prompt).strip() or None) if f.negative_prompt else None,
        num_inference_steps=_int(f.steps, "steps"),
        guidance_scale=float(f.guidance),
        seed=used,
    )
    mask = MaskOptions(dilate=_int(f.dilate, "mask dilation"), feather=_int(f.feather, "feather"),
                       resize=mask_resize)  # fmt: skip
    return InpaintOptions(generation, mask, GeometryOptions(mode=f.mode)), used


def _int(v: Any, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {v!r}") from None
    if f != int(f):
        raise ConfigError(f"{what} must be a whole number, got {v!r}")
    return int(f)


def reproduction_params(
    options: InpaintOptions, seed: int, model: dict[str, Any], ignores: tuple[str, ...] = ()
) -> dict:
    """What reproduces a result in a job: the job config's keys and a manifest row's override
    columns, both derived from the options' fields by config.job_settings / params.row_overrides,
    without the generation fields the model ignores (`ignores`: its spec's).

    The seed belongs in the row: a job's own `seed` is a base from which each row's seed is derived.
    """
    backend = model.get("backend") or "diffusers"
    loadable = backend in ("diffusers", "lama")  # the tiny checkpoint is rebuilt from code
    job = job_settings(
        options,
        backend=backend,
        model=model.get("model") if loadable else None,
        revision=model.get("revision") if loadable else None,
    )
    unused = {n for n, k in KEYS.items() if k.part == "generation" and k.field.name in ignores}
    job = {k: v for k, v in job.items() if k not in unused}
    row = {k: v for k, v in row_overrides(options, seed).items() if k not in ignores}
    return {"job_config": job, "manifest_row": row}


def job_yaml(params: dict) -> str:
    """The job settings as YAML to paste into a job config file."""
    import yaml

    return yaml.safe_dump(params["job_config"], sort_keys=False, allow_unicode=True)


def row_json(params: dict, row: dict[str, Any] | None = None) -> str:
    """The manifest row as JSON (with id/image/mask once it has been added to a manifest)."""
    return json.dumps(row if row is not None else params["manifest_row"], indent=2)


# -- running ----------------------------------------------------------------------------------
def run_inpaint(picture: Picture, mask: np.ndarray, inpainter: Any, options: InpaintOptions,
                seed: int) -> RunResult:  # fmt: skip
    """Inpaint the picture where `mask` is set, through the same path a job row takes."""
    from batch_inpaint.image.inpaint import inpaint_array

    if mask.shape != picture.rgb.shape[:2]:
        raise MaskError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {picture.size}")
    if not mask.any():
        raise MaskError(
            "nothing to inpaint: paint over what should go (or upload a mask), then run"
        )
    result = inpaint_array(picture.rgb, mask, inpainter, options, seed=seed)
    image = np.asarray(result.image)
    params = reproduction_params(options, seed, inpainter.describe(), inpainter.spec.ignores)
    return RunResult(image, codec.encode_image(image, "png"), seed, result.status, params)


# -- the page's events ------------------------------------------------------------------------
def editor_value(picture: Picture, mask: np.ndarray | None, settings: ServeSettings) -> dict:
    """What the editor shows: a preview of the picture, an uploaded mask tinted on it."""
    shown = preview(tint(picture.rgb, mask), EDITOR_MAX_SIDE, settings.max_upload_bytes)
    return {"background": shown, "layers": [], "composite": shown}


def upload_image(path: str, settings: ServeSettings) -> tuple[PageState, dict]:
    """A new session state and editor value for an uploaded image; DecodeError says why not."""
    picture = load_upload(path, settings, name=Path(path).name)
    return PageState(picture=picture), editor_value(picture, None, settings)


def pick_sample(
    name: str, samples: dict[str, Sample], settings: ServeSettings
) -> tuple[PageState, dict]:
    picture = load_sample(name, samples, settings)
    return PageState(picture=picture), editor_value(picture, None, settings)


def upload_mask(
    path: str | None, state: PageState, settings: ServeSettings
) -> tuple[PageState, dict]:
    """The state and editor value with a mask file added (or removed, for None)."""
    if state.picture is None:
        raise ConfigError("load an image first, then its mask")
    concerns: list[str] = []
    mask = load_mask_upload(path, state.picture, settings, concerns) if path else None
    resized = any(c.split(":")[0] == MaskConcern.SIZE for c in concerns)
    new = replace(state, uploaded_mask=mask, mask_resized=resized)
    return new, editor_value(state.picture, mask, settings)


def painted_mask(state: PageState, editor: dict | None, settings: ServeSettings) -> np.ndarray:
    """The mask to inpaint: what was painted on the editor's layers (files, checked before they
    are decoded) and any uploaded mask, at the picture's size."""
    shown = bool(editor) and editor.get("background") is not None
    if state.picture is None and shown:
        raise ConfigError(
            f"the server let go of this image after {settings.idle_minutes:g} minutes without "
            "use (or to make room for other sessions): upload it again or pick a sample"
        )
    if state.picture is None or not shown:
        raise ConfigError("upload an image or pick a sample first")
    mask = mask_from_layers(editor.get("layers"), state.picture.size, settings)
    if state.uploaded_mask is not None:
        mask |= state.uploaded_mask
    return mask


def run(
    state: PageState, editor: dict | None, fields: Fields, inpainter: Any, settings: ServeSettings
) -> tuple[RunResult, PageState]:
    """Inpaint what was painted; the new state remembers the seed used."""
    mask = painted_mask(state, editor, settings)
    options, used = make_options(fields, state.mask_resized)
    result = run_inpaint(state.picture, mask, inpainter, options, used)
    return result, replace(state, last_seed=used)


def add(
    state: PageState,
    editor: dict | None,
    fields: Fields,
    manifest_name: str,
    model: dict[str, Any],
    settings: ServeSettings,
    ignores: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Add the picture, what was painted and the settings (less what the model `ignores`) to a
    manifest; returns the message to show and the row as JSON."""
    mask = painted_mask(state, editor, settings)
    # With "random seed" ticked, the row keeps the seed of the last run (the result seen).
    seed = state.last_seed if fields.random_seed else fields.seed
    options, used = make_options(replace(fields, seed=seed, random_seed=seed is None),
                                 state.mask_resized)  # fmt: skip
    params = reproduction_params(options, used, model, ignores)
    root = settings.manifest_root
    path, row, added = add_to_manifest(root, manifest_name, state.picture, mask, params)
    if not added:  # the path in full: the server's working folder is not the person's
        return (f"Already in `{path}` as row `{row['id']}` (same image, mask and settings); "
                "nothing added.", row_json(params, row))  # fmt: skip
    return f"Added row `{row['id']}` to `{path}`.", row_json(params, row)
