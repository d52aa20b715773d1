"""JobConfig: every setting of a job, from CLI flags and/or a YAML file, validated before any cluster
work. The same object flows from the CLI to every stage; no stage reads the environment itself."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from batch_inpaint.errors import ConfigError
from batch_inpaint.params import GenerationParams, GeometryOptions, InpaintOptions, MaskOptions

BACKENDS = ("diffusers", "opencv", "tiny")
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "fp16", "bf16", "fp32")
ATTENTION = ("slicing", "sdpa", "auto")
FORMATS = ("png", "jpeg", "webp")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclass
class JobConfig:
    """One inpainting job. Field names are the YAML keys; CLI flags are the same names with dashes."""

    manifest: str = ""
    output: str = ""
    # model
    backend: str = "diffusers"
    model: str | None = None  # Hub id, local dir or object-storage prefix; None: backend default
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU (the model card's rule)
    attention: str = "slicing"  # the model card's setting; "sdpa" or "auto" are faster on GPUs
    vae_tiling: bool = False
    torch_compile: bool = False
    # geometry and masks
    mode: str = "full"
    max_side: int = 1024
    crop_size: int | None = None
    mask_threshold: float = 0.5
    invert_mask: bool = False
    mask_resize: bool = False
    dilate: int = 0
    feather: int = 0
    max_pixels: int = 64_000_000
    # generation defaults (a manifest row's own values win)
    prompt: str = "background"
    negative_prompt: str | None = None
    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    strength: float = 1.0
    scheduler: str = "default"
    seed: int | None = None  # base seed; a row's seed is derived from it and the row id
    # execution
    batch_size: int = 0  # 0: chosen from the working size (see batch_size_for)
    min_actors: int = 1
    max_actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else CPU actors
    cpus_per_actor: float = 1.0
    cpus_per_task: float = 1.0
    address: str | None = None  # Ray address; None: connect to the cluster we run on or start one
    # outputs
    output_format: str = "png"
    jpeg_quality: int = 95
    png_compress_level: int = 1
    keep_exif: bool = False
    resume: bool = True
    retry_errors: bool = False
    incremental: bool = False
    lock_ttl_s: float = 6 * 3600.0
    flush_rows: int = 1000
    flush_interval_s: float = 30.0
    progress_interval_s: float = 10.0
    report_sample: int = 24
    # storage (credentials come from the environment or profile and are never stored)
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    allow_http: bool = False
    allowed_buckets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> JobConfig:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"config field '{name}': {msg}")

        for f in fields(self):
            _check_type(self, f)
        need(
            self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}, got {self.backend!r}"
        )
        need(self.device in DEVICES, "device", f"must be one of {DEVICES}, got {self.device!r}")
        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        need(self.attention in ATTENTION, "attention", f"must be one of {ATTENTION}")
        need(self.output_format in FORMATS, "output_format", f"must be one of {FORMATS}")
        need(self.device != "cpu" or self.dtype not in ("fp16", "bf16"), "dtype",
             "fp16/bf16 need a GPU; on CPU use fp32 (as the model card says)")  # fmt: skip
        need(self.batch_size >= 0, "batch_size", "must be >= 0 (0 = automatic)")
        need(self.min_actors >= 1, "min_actors", "must be >= 1")
        need(self.max_actors >= self.min_actors, "max_actors", "must be >= min_actors")
        need(self.gpus_per_actor is None or 0 <= self.gpus_per_actor <= 8, "gpus_per_actor",
             "must be in [0, 8] (fractions such as 0.5 share a GPU)")  # fmt: skip
        need(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")
        need(self.cpus_per_task > 0, "cpus_per_task", "must be > 0")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")
        need(0 <= self.png_compress_level <= 9, "png_compress_level", "must be in [0, 9]")
        need(self.max_pixels >= 1, "max_pixels", "must be >= 1")
        need(self.flush_rows >= 1, "flush_rows", "must be >= 1")
        need(self.lock_ttl_s > 0, "lock_ttl_s", "must be > 0")
        need(self.flush_interval_s >= 0, "flush_interval_s", "must be >= 0")
        need(self.progress_interval_s >= 0, "progress_interval_s", "must be >= 0")
        need(self.report_sample >= 0, "report_sample", "must be >= 0")
        need(self.endpoint_url is None or self.endpoint_url.startswith(("http://", "https://")),
             "endpoint_url", "must start with http:// or https://")  # fmt: skip
        # Fields that feed InpaintOptions follow its rules; errors name the config field.
        for name, build in {
            "prompt": lambda: GenerationParams(prompt=self.prompt),
            "steps": lambda: GenerationParams(num_inference_steps=self.steps),
            "guidance_scale": lambda: GenerationParams(guidance_scale=self.guidance_scale),
            "eta": lambda: GenerationParams(eta=self.eta),
            "strength": lambda: GenerationParams(strength=self.strength),
            "scheduler": lambda: GenerationParams(scheduler=self.scheduler),
            "mask_threshold": lambda: MaskOptions(threshold=self.mask_threshold),
            "dilate": lambda: MaskOptions(dilate=self.dilate),
            "feather": lambda: MaskOptions(feather=self.feather),
            "mode": lambda: GeometryOptions(mode=self.mode),
            "max_side": lambda: GeometryOptions(max_side=self.max_side),
            "crop_size": lambda: GeometryOptions(crop_size=self.crop_size),
        }.items():
            try:
                build()
            except ConfigError as exc:
                raise ConfigError(f"config field '{name}': {exc}") from None
        try:
            self.inpaint_options()
        except ConfigError as exc:
            raise ConfigError(f"config: {exc}") from None
        return self

    def require_io(self) -> JobConfig:
        """A job needs somewhere to read and write; checked apart so a config can be built up."""
        if not self.manifest:
            raise ConfigError("config field 'manifest': required (URI of the manifest Parquet)")
        if not self.output:
            raise ConfigError("config field 'output': required (URI of the output folder)")
        return self

    # -- derived objects --------------------------------------------------------------------
    def inpaint_options(self) -> InpaintOptions:
        return InpaintOptions(
            generation=GenerationParams(
                prompt=self.prompt,
                negative_prompt=self.negative_prompt,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                eta=self.eta,
                strength=self.strength,
                scheduler=self.scheduler,
            ),
            mask=MaskOptions(
                threshold=self.mask_threshold,
                invert=self.invert_mask,
                dilate=self.dilate,
                feather=self.feather,
                resize=self.mask_resize,
            ),
            geometry=GeometryOptions(
                mode=self.mode, max_side=self.max_side, crop_size=self.crop_size
            ),
        )

    def storage_options(self):
        from batch_inpaint.storage.store import StorageOptions

        return StorageOptions.from_env(
            endpoint_url=self.endpoint_url,
            region=self.region,
            profile=self.profile,
            anon=self.anon,
            allow_http=self.allow_http,
            allowed_buckets=tuple(self.allowed_buckets) or None,
        )

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.output_format]

    def to_dict(self) -> dict[str, Any]:
        """Every setting; holds no secret (credentials never enter a JobConfig)."""
        return dataclasses.asdict(self)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> JobConfig:
        known = {f.name for f in fields(cls)}
        data = {k.replace("-", "_"): v for k, v in (data or {}).items()}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> JobConfig:
        import yaml

        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=f"config file {path}")


def _check_type(cfg: JobConfig, f: dataclasses.Field) -> None:
    """Types checked by hand: YAML and Python callers can hand us anything."""
    value = getattr(cfg, f.name)
    kind = str(f.type)
    optional = "None" in kind
    if value is None:
        if not optional:
            raise ConfigError(f"config field '{f.name}': must not be empty")
        return
    if kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            setattr(cfg, f.name, float(value))
    elif kind.startswith("str"):
        ok = isinstance(value, str)
    elif kind.startswith("list"):
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if ok:
            setattr(cfg, f.name, list(value))
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"config field '{f.name}': expected {kind.replace(' | None', '')}, "
            f"got {type(value).__name__} {value!r}"
        )


def batch_size_for(work_w: int, work_h: int, on_gpu: bool) -> int:
    """Images per forward pass by working size: batching pays on GPUs at small sizes; on CPU it
    only costs memory. Measured figures behind these numbers are in bench/ and the README."""
    if not on_gpu:
        return 1
    pixels = work_w * work_h
    if pixels <= 512 * 512:
        return 8
    if pixels <= 768 * 768:
        return 4
    if pixels <= 1024 * 1024:
        return 2
    return 1


# -- command line ------------------------------------------------------------------------------
_HELP = {
    "manifest": "URI of the manifest (a Parquet file or a folder of parts)",
    "output": "URI of the output folder (images/, metadata/, run.json, report.html)",
    "backend": "model backend",
    "model": "Hub id, local folder or s3://… prefix of a diffusers inpainting checkpoint",
    "revision": "model revision (commit or tag) to pin",
    "device": "where the model runs",
    "dtype": "auto = fp16 on CUDA, fp32 on CPU",
    "attention": "slicing (model card; least memory), sdpa (faster), auto",
    "vae_tiling": "decode large images in tiles (less memory)",
    "torch_compile": "torch.compile the UNet (GPU; slow start, faster steps)",
    "mode": "full: whole image at a working size; crop: only around each masked region",
    "max_side": "full mode: longest working side (multiple of 8)",
    "crop_size": "crop mode: working side (default: the model's native size)",
    "mask_threshold": "mask pixels above this fraction of full scale are inpainted",
    "invert_mask": "inpaint where the mask is black",
    "mask_resize": "resize masks whose size differs from their image (else an error row)",
    "dilate": "grow masks by N pixels",
    "feather": "soft edge of N pixels when pasting back",
    "max_pixels": "images with more pixels are refused (decompression-bomb guard)",
    "prompt": "default prompt (a row's prompt wins)",
    "negative_prompt": "default negative prompt",
    "steps": "inference steps",
    "guidance_scale": "classifier-free guidance scale",
    "eta": "DDIM eta",
    "strength": "how much of the masked area to regenerate (1.0 = all)",
    "scheduler": "default (the checkpoint's), dpm++, ddim, euler_a",
    "seed": "base seed; each row's seed derives from it and the row id (a row's seed wins)",
    "batch_size": "images per forward pass; 0 = by working size",
    "min_actors": "smallest model actor pool",
    "max_actors": "largest model actor pool (autoscaling between the two)",
    "gpus_per_actor": "GPUs per model actor (fractions share a GPU; 0 = CPU actors)",
    "cpus_per_actor": "CPUs per model actor",
    "cpus_per_task": "CPUs per read/decode and paste/encode/write task",
    "address": "Ray cluster address (default: the cluster this runs on, or a local one)",
    "output_format": "format of output images",
    "jpeg_quality": "JPEG/WebP quality",
    "png_compress_level": "PNG zlib level (1 is fast; 9 is small and slow)",
    "keep_exif": "keep the input's EXIF (stripped by default: it can hold GPS)",
    "resume": "skip rows an earlier run into the same output finished",
    "retry_errors": "with resume, also redo rows that ended in error",
    "incremental": "scheduled cleaning: hold a lock on the output and only do unfinished rows",
    "lock_ttl_s": "incremental: seconds after which another run may take a stale lock",
    "flush_rows": "write a metadata part every N result rows",
    "flush_interval_s": "…or every N seconds",
    "progress_interval_s": "log a progress line every N seconds",
    "report_sample": "rows shown in report.html's contact sheet",
    "endpoint_url": "S3 endpoint (e.g. MinIO); default from AWS_ENDPOINT_URL",
    "region": "S3 region",
    "profile": "AWS profile name",
    "anon": "anonymous object-storage access",
    "allow_http": "allow http(s):// image URIs (off: a manifest must not make workers fetch URLs)",
    "allowed_buckets": "only these buckets may be read or written (comma-separated or repeated)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per JobConfig field; unset flags fall back to the YAML file, then the defaults."""
    parser.add_argument("--config", help="YAML file of job settings (flags override it)")
    defaults = JobConfig.__dataclass_fields__
    for f in fields(JobConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        d = defaults[f.name].default
        default_txt = "" if d in (None, "", dataclasses.MISSING) else f" (default: {d})"
        help_txt = _HELP.get(f.name, f.name) + default_txt
        if kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_txt)  # fmt: skip
        elif kind.startswith("list"):
            parser.add_argument(flag, action="append", default=None, help=help_txt)
        else:
            typ = int if kind.startswith("int") else float if kind.startswith("float") else str
            choices = {"backend": BACKENDS, "device": DEVICES, "dtype": DTYPES,
                       "attention": ATTENTION, "output_format": FORMATS,
                       "mode": ("full", "crop")}.get(f.name)  # fmt: skip
            parser.add_argument(flag, type=typ, default=None, choices=choices, help=help_txt)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    given = {f.name: getattr(args, f.name) for f in fields(JobConfig)}
    given = {k: v for k, v in given.items() if v is not None}
    if "allowed_buckets" in given:  # repeatable and/or comma-separated, as in `manifest` commands
        given["allowed_buckets"] = [b for v in given["allowed_buckets"] for b in v.split(",") if b]
    if getattr(args, "config", None):
        return JobConfig.from_yaml(args.config, **given)
    return JobConfig.from_dict(given, source="command line")


def public_json(cfg: JobConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
