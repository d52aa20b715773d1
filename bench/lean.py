"""The lean loop: what a user would write instead of the job (issue 27), c2's headline baseline.

Per row, in this process on one core: read the image and the mask, `cv2.inpaint(img, mask > 127,
3, INPAINT_TELEA)`, `cv2.imwrite` a PNG at compression level 1. No checks, no metadata, no error
rows, no resume: the least work that gives an inpainted PNG per input. From local files with
cv2.imread / cv2.imwrite; from S3 with one boto3 client, get_object + cv2.imdecode and
cv2.imencode + put_object.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def _inpaint(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.inpaint(img, (mask > 127).astype(np.uint8), 3, cv2.INPAINT_TELEA)


def lean_files(folder: Path, table: pa.Table, out: Path) -> dict:
    """The loop over local files: the manifest's image and mask paths are relative to `folder`;
    one PNG per row goes to `out`."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    level = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ids, images, masks = (table.column(c).to_pylist() for c in ("id", "image", "mask"))
    t0, bad, sizes = time.perf_counter(), 0, []
    for rid, image, mask in zip(ids, images, masks, strict=True):
        img = cv2.imread(str(folder / image), cv2.IMREAD_COLOR)
        m = cv2.imread(str(folder / mask), cv2.IMREAD_GRAYSCALE)
        path = out / f"{rid}.png"
        ok = cv2.imwrite(str(path), _inpaint(img, m), level)
        bad += not ok
        sizes.append(path.stat().st_size if ok else 0)
    return _row(table.num_rows, time.perf_counter() - t0, bad, sizes)


def lean_s3(client, bucket: str, table: pa.Table, prefix: str) -> dict:
    """The loop over S3: `client` a boto3 S3 client; the manifest's URIs are s3://bucket/key;
    one PNG per row goes to s3://bucket/prefix/<id>.png."""
    import cv2

    level = [cv2.IMWRITE_PNG_COMPRESSION, 1]

    def get(uri: str, flags: int) -> np.ndarray:
        body = client.get_object(Bucket=bucket, Key=uri.split("/", 3)[3])["Body"].read()
        return cv2.imdecode(np.frombuffer(body, np.uint8), flags)

    ids, images, masks = (table.column(c).to_pylist() for c in ("id", "image", "mask"))
    t0, bad, sizes = time.perf_counter(), 0, []
    for rid, image, mask in zip(ids, images, masks, strict=True):
        img, m = get(image, cv2.IMREAD_COLOR), get(mask, cv2.IMREAD_GRAYSCALE)
        ok, buf = cv2.imencode(".png", _inpaint(img, m), level)
        bad += not ok
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rid}.png", Body=buf.tobytes())
        sizes.append(buf.size)
    return _row(table.num_rows, time.perf_counter() - t0, bad, sizes)


def run_apart(source: str, manifest: str, where: str, s3: tuple[str, str] | None = None) -> dict:
    """The lean loop in a fresh process, as a user's script runs: nothing the bench or the job
    set in this one (the job's malloc settings, OpenCV threads, warm caches) carries over.
    `source` files: `manifest` a local parquet, its paths relative to its folder, outputs to the
    folder `where`; s3: `s3` (endpoint, bucket), outputs under the key prefix `where`.
    `seconds` and `cpu_s_per_row` cover the loop; `seconds_with_start` the process's start and
    imports too."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        row = pool.apply(_apart, (source, manifest, where, s3))
    return {**row, "seconds_with_start": round(time.perf_counter() - t0, 2)}


def _apart(source: str, manifest: str, where: str, s3: tuple[str, str] | None) -> dict:
    import cv2
    import pyarrow.parquet as pq

    cv2.setNumThreads(1)  # one core, as the stage loop
    c0 = time.process_time()
    if source == "s3":
        import boto3

        from .s3local import KEY, REGION, SECRET

        endpoint, bucket = s3
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                              aws_access_key_id=KEY, aws_secret_access_key=SECRET)  # fmt: skip
        key = manifest.split("/", 3)[3]
        table = pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
        c0 = time.process_time()
        row = lean_s3(client, bucket, table, where)
    else:
        table = pq.read_table(manifest)
        c0 = time.process_time()
        row = lean_files(Path(manifest).parent, table, Path(where))
    return {**row, "cpu_s_per_row": (time.process_time() - c0) / table.num_rows}


def _row(n: int, sec: float, bad: int, sizes: list[int]) -> dict:
    return {"path": "lean_loop", "rows": n, "seconds": round(sec, 2), "rows_per_s": n / sec,
            "rows_not_ok": bad, "output_kb": round(float(np.mean(sizes)) / 1024, 1)}  # fmt: skip
