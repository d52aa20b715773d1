"""Where a job finds its rows in shards, and what it writes: JobConfig nests these as `shards`
(YAML keys / `run` flags image_column, mask_column, id_column, mask_member), and owns the two
format keys (docs/reference.md, "Shards in and out"):

- `output_format`: the output's layout, files | parquet | webdataset (auto: files for a manifest
  of URIs, the input's own format for shards);
- `image_format`: the encoding of each inpainted image, png | jpeg | webp.

Before shards, output_format meant the encoding: png, jpeg and webp given to it still mean files
in that encoding."""

from __future__ import annotations

from dataclasses import dataclass

from batch_inpaint.errors import ConfigError
from batch_inpaint.option import check_fields, option

OUTPUT_FORMATS = ("auto", "files", "parquet", "webdataset")
SHARD_FORMATS = ("parquet", "webdataset")
IMAGE_FORMATS = ("png", "jpeg", "webp")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class ShardOptions:
    # fmt: off
    image_column: str = option("image", flag=False, help="shards: the column (Parquet) holding "
                               "the image bytes, binary or the datasets struct {bytes, path}")
    mask_column: str = option("mask", flag=False, help="shards: the column holding the mask "
                              "bytes (absent: masks from --detect or a detect column)")
    id_column: str | None = option(None, flag=False, help="shards: the column holding the row "
                                   "id; unset: 'id' when there is one, else '<shard>:<row index>'")
    mask_member: str = option("mask.png", flag=False, help="WebDataset: the member of a sample "
                              "holding its mask")
    # fmt: on

    def __post_init__(self) -> None:
        check_fields(self)  # types and rules, naming the key


def split_formats(output_format: str, image_format: str) -> tuple[str, str]:
    """(layout, encoding): an encoding given to output_format (the old meaning) is files in that
    encoding; given to both keys with different values, it is refused."""
    if output_format not in IMAGE_FORMATS:
        return output_format, image_format
    if image_format not in ("png", output_format):
        raise ConfigError(f"config field 'output_format': {output_format} (an image encoding, "
                          f"the old meaning) disagrees with image_format {image_format}; set "
                          "output_format to files|parquet|webdataset and image_format to the "
                          "encoding")  # fmt: skip
    return "files", output_format


def set_formats(cfg) -> None:
    """A JobConfig's two format keys as split_formats reads them (called by its validate)."""
    formats = split_formats(cfg.output_format, cfg.image_format)
    for name, value in zip(("output_format", "image_format"), formats, strict=True):
        object.__setattr__(cfg, name, value)
