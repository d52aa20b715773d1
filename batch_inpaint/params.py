"""Per-image inpainting options shared by every way in (compat pipeline, CLI, web page, job)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from batch_inpaint.errors import ConfigError

Mode = Literal["full", "crop"]
SCHEDULERS = ("default", "dpm++", "ddim", "euler_a")


@dataclass(frozen=True)
class MaskOptions:
    """How a raw mask becomes the hard mask given to the model and the soft one used to paste."""

    threshold: float = 0.5  # fraction of the mask's full scale; pixels above it are masked
    invert: bool = False
    dilate: int = 0  # pixels
    feather: int = 0  # pixels of soft edge, grown outward from the dilated mask
    resize: bool = False  # nearest-neighbour resize of a mask whose size differs from its image

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"mask threshold must be in [0, 1], got {self.threshold}")
        for name in ("dilate", "feather"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 512:
                raise ConfigError(f"mask {name} must be an integer in [0, 512], got {v!r}")


@dataclass(frozen=True)
class GeometryOptions:
    """Which pixels go to the model, at what size."""

    mode: Mode = "full"
    max_side: int = 1024  # full mode: longest working side
    crop_size: int | None = None  # crop mode: working side; None = the model's native size
    margin: float = 0.25  # crop mode: context around a region, as a fraction of its size
    min_margin: int = 32  # crop mode: at least this many pixels of context
    merge_distance: int = 64  # crop mode: regions closer than this are inpainted together

    def __post_init__(self) -> None:
        if self.mode not in ("full", "crop"):
            raise ConfigError(f"mode must be 'full' or 'crop', got {self.mode!r}")
        if self.max_side < 64 or self.max_side % 8:
            raise ConfigError(f"max_side must be a multiple of 8 and >= 64, got {self.max_side}")
        if self.crop_size is not None and (self.crop_size < 64 or self.crop_size % 8):
            raise ConfigError(f"crop_size must be a multiple of 8 and >= 64, got {self.crop_size}")
        if self.margin < 0 or self.min_margin < 0 or self.merge_distance < 0:
            raise ConfigError("margin, min_margin and merge_distance must be >= 0")


@dataclass(frozen=True)
class GenerationParams:
    """Model parameters, with the model card's defaults."""

    prompt: str = "background"
    negative_prompt: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    strength: float = 1.0
    num_images_per_prompt: int = 1
    seed: int | None = None  # None: derived from the row id (job) or random (interactive)
    scheduler: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ConfigError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not 1 <= int(self.num_inference_steps) <= 1000:
            raise ConfigError(
                f"num_inference_steps must be in [1, 1000], got {self.num_inference_steps}"
            )
        if not 0.0 <= float(self.guidance_scale) <= 100.0:
            raise ConfigError(f"guidance_scale must be in [0, 100], got {self.guidance_scale}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise ConfigError(f"strength must be in (0, 1], got {self.strength}")
        if not 1 <= int(self.num_images_per_prompt) <= 16:
            raise ConfigError(
                f"num_images_per_prompt must be in [1, 16], got {self.num_images_per_prompt}"
            )
        if self.seed is not None and not 0 <= int(self.seed) < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")

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


def derive_seed(row_id: str) -> int:
    """A stable seed for a row with none: same id, same seed, on every machine and rerun."""
    import hashlib

    return int.from_bytes(hashlib.sha256(row_id.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF
