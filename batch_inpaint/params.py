"""Per-image inpainting options shared by every way in (compat pipeline, CLI, web page, job).

Each field is an `option` (batch_inpaint/option.py): its help, YAML key, flag, range and choices
are declared here once, and the job config, both CLIs, the compat pipeline, the web page and the
manifest's per-row override columns are derived from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.option import OptionError, check_fields, kind, meta, option
from batch_inpaint.vocab import ErrorKind

SCHEDULERS = ("default", "dpm++", "ddim", "euler_a")
MODES = ("full", "crop")


@dataclass(frozen=True)
class MaskOptions:
    """How a raw mask becomes the hard mask given to the model and the soft one used to paste."""

    threshold: float = option(
        0.5,
        key="mask_threshold",
        lo=0.0,
        hi=1.0,
        help="fraction of full brightness above which a mask pixel is filled",
    )
    invert: bool = option(False, key="invert_mask", help="fill where the mask is dark")
    dilate: int = option(0, lo=0, hi=512, help="grow the mask by N pixels")
    feather: int = option(
        0,
        lo=0,
        hi=512,
        help="soft edge of N pixels, grown outward from the dilated mask, when pasting back",
    )
    resize: bool = option(
        False,
        key="mask_resize",
        help="resize (nearest) a mask whose size differs from its image; else that is an error",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class GeometryOptions:
    """Which pixels go to the model, at what size."""

    mode: str = option(
        "full",
        choices=MODES,
        help="full: the whole frame at up to max side; "
        "crop: a model-sized window around each masked region, so small edits "
        "keep full detail",
    )
    max_side: int = option(
        1024, lo=64, multiple=8, help="full mode: longest side sent to the model"
    )
    crop_size: int | None = option(
        None, lo=64, multiple=8, help="crop mode: working side; unset: the model's native size"
    )
    margin: float = option(
        0.25,
        lo=0.0,
        job=False,
        flag=False,
        help="crop mode: context around a region, as a fraction of its size",
    )
    min_margin: int = option(
        32, lo=0, job=False, flag=False, help="crop mode: at least this many pixels of context"
    )
    merge_distance: int = option(
        64,
        lo=0,
        job=False,
        flag=False,
        help="crop mode: regions closer than this are inpainted together",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class GenerationParams:
    """Model parameters, with the model card's defaults."""

    prompt: str = option("background", row=True, help="what to paint in the masked area")
    negative_prompt: str | None = option(None, row=True, help="what to avoid")
    num_inference_steps: int = option(
        50, key="steps", lo=1, hi=1000, row=True, help="denoising steps"
    )
    guidance_scale: float = option(
        7.5,
        lo=0.0,
        hi=100.0,
        row=True,
        help="how closely to follow the prompt; <= 1 turns guidance off",
    )
    eta: float = option(0.0, lo=0.0, hi=1.0, help="DDIM noise; only ddim and its kin use it")
    strength: float = option(
        1.0,
        lo=0.0,
        lo_open=True,
        hi=1.0,
        row=True,
        help="how far to move from the input; 1.0 repaints the masked area",
    )
    num_images_per_prompt: int = option(
        1,
        key="num_images",
        lo=1,
        hi=16,
        job=False,
        help="results per input; more than one writes out-0.png, out-1.png, ... for -o out.png",
    )
    seed: int | None = option(
        None,
        lo=0,
        hi=2**63,
        hi_open=True,
        row=True,
        help="random seed: same seed and inputs, same output. Unset: random "
        "(printed) in process; in a job, each row's seed is derived from the "
        "row's id and this base",
    )
    scheduler: str = option(
        "default", choices=SCHEDULERS, help="sampler; default is the checkpoint's own"
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def batch_key(self) -> tuple:
        """Rows with equal keys (and equal working sizes) can share one forward pass."""
        return (
            self.num_inference_steps,
            self.guidance_scale,
            self.eta,
            self.strength,
            self.num_images_per_prompt,
            self.scheduler,
        )

    def with_overrides(self, **overrides: Any) -> GenerationParams:
        """A copy with the non-None overrides applied (per-row values over job defaults)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InpaintOptions:
    """Everything that decides one image's result, apart from the model."""

    generation: GenerationParams = field(default_factory=GenerationParams)
    mask: MaskOptions = field(default_factory=MaskOptions)
    geometry: GeometryOptions = field(default_factory=GeometryOptions)


# A manifest row's override columns: the GenerationParams fields marked row=True, by field name.
ROW_FIELDS = {f.name: f for f in fields(GenerationParams) if meta(f).row}
ROW_COLUMNS = tuple(ROW_FIELDS)


def row_generation(row: Mapping, base: GenerationParams) -> GenerationParams:
    """`base` with the row's non-null override columns applied; ConfigError (kind bad_value)
    naming the column on a bad value. Manifest validation and the job both call this, so they
    accept the same rows. A whole float in an integer column (pandas writes integer columns with
    gaps as float64) is taken as that integer; any other value must have the column's type."""
    changes = {}
    for col, f in ROW_FIELDS.items():
        v = row.get(col)
        if v is None:
            continue
        if kind(f)[0] == "int" and isinstance(v, float) and v.is_integer():
            v = int(v)
        changes[col] = v
    try:
        return replace(base, **changes)
    except OptionError as exc:
        msg = f"column '{exc.field}': {exc.reason}"
        raise ConfigError(msg, kind=ErrorKind.BAD_VALUE.value) from None


def row_overrides(options: InpaintOptions, seed: int | None = None) -> dict[str, Any]:
    """The manifest override columns that reproduce `options` in a job (row_generation's inverse);
    `seed`, when given, replaces the options' own (the seed actually used)."""
    g = options.generation
    row = {col: getattr(g, col) for col in ROW_COLUMNS}
    if seed is not None:
        row["seed"] = seed
    row_generation(row, g)  # a seed the job would refuse fails here, naming the column
    return row


def derive_seed(row_id: str) -> int:
    """A stable seed for a row with none: same id, same seed, on every machine and rerun."""
    import hashlib

    return int.from_bytes(hashlib.sha256(row_id.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF
