"""Draws the bundled sample masks (white = inpaint) from shapes traced by hand over each photograph,
and writes manifest.parquet listing the samples. Rerun after changing a shape:

    .venv/bin/python examples/make_masks.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> list[tuple[float, float]]:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


# image file -> (what is masked, polygons traced over it); licence as stated by scikit-image's data module
SAMPLES = {
    "astronaut.png": (
        "mission patch and name tag",
        [
            ellipse(172, 385, 44, 42),
            [(270, 338), (332, 340), (333, 374), (272, 372)],
        ],
        "public domain (NASA)",
    ),
    "coffee.png": (
        "spoon",
        [
            [
                (398, 68),
                (426, 70),
                (418, 112),
                (400, 170),
                (388, 228),
                (404, 250),
                (410, 292),
                (392, 328),
                (348, 330),
                (322, 302),
                (326, 262),
                (348, 240),
                (372, 228),
                (382, 196),
                (396, 118),
            ],
        ],
        "CC0 (Rachel Michetti)",
    ),
    "rocket.jpg": (
        "rocket on the launch pad",
        [[(306, 152), (313, 132), (322, 124), (332, 132), (338, 152), (342, 402), (302, 402)]],
        "public domain (SpaceX)",
    ),
    "chelsea.png": ("left eye", [ellipse(170, 116, 40, 32)], "CC0 (Stefan van der Walt)"),
    "camera.png": (
        "camcorder on the tripod",
        [[(252, 136), (326, 134), (336, 168), (332, 204), (262, 202), (252, 180)]],
        "CC0 (Lav Varshney)",
    ),
    "motorcycle.png": (
        "brand logo on the tank",
        [[(398, 192), (452, 190), (454, 214), (400, 216)]],
        "CC-0 (David Root)",
    ),
}

# Samples whose mask is given as boxes in the manifest instead of a mask file (text removal).
BOX_SAMPLES = {
    "page.png": ("paragraph of text", [[0, 50, 384, 136]], "public domain"),
    "text.png": ("handwritten symbols", [[2, 52, 84, 96], [160, 50, 290, 112]], "public domain"),
}


def draw_mask(image_path: Path, polygons: list) -> Image.Image:
    with Image.open(image_path) as im:
        mask = Image.new("L", im.size, 0)
    draw = ImageDraw.Draw(mask)
    for poly in polygons:
        draw.polygon([(round(x), round(y)) for x, y in poly], fill=255)
    return mask


def main() -> None:
    rows = []
    for name, (what, polys, licence) in SAMPLES.items():
        stem = Path(name).stem
        draw_mask(HERE / "images" / name, polys).save(HERE / "masks" / f"{stem}.png", optimize=True)
        rows.append(
            dict(
                id=stem,
                image=f"images/{name}",
                mask=f"masks/{stem}.png",
                mask_boxes=None,
                what=what,
                licence=licence,
            )
        )
    for name, (what, boxes, licence) in BOX_SAMPLES.items():
        stem = Path(name).stem
        rows.append(
            dict(
                id=stem,
                image=f"images/{name}",
                mask=None,
                mask_boxes=boxes,
                what=what,
                licence=licence,
            )
        )
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("image", pa.string()),
                ("mask", pa.string()),
                ("mask_boxes", pa.list_(pa.list_(pa.float64()))),
                ("what", pa.string()),
                ("licence", pa.string()),
            ]
        ),
    )
    pq.write_table(table, HERE / "manifest.parquet")
    print(f"wrote {len(rows)} rows to {HERE / 'manifest.parquet'}")


if __name__ == "__main__":
    main()
