"""A local S3 endpoint for the CPU workloads: moto's ThreadedMotoServer, started by the bench in a
child process of its own, so serving requests never holds the measured process's GIL (on a real
cluster the object store is another machine). It still shares this machine's cores: say so."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch_inpaint.image import codec
from batch_inpaint.image.masks import random_mask
from batch_inpaint.storage.store import StorageOptions

from . import record as rec

KEY, SECRET, REGION = "bench-key-id", "bench-secret-not-real", "us-east-1"
NOTE = (
    "Objects come from a local moto S3 server in a child process on this machine: no network "
    "latency, but the server's CPU time comes out of the same cores."
)


def _serve(port: int, parent: int) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    while os.getppid() == parent:  # a killed bench leaves no server behind
        time.sleep(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """Start with `with LocalS3() as s3:`; `s3.options` are the StorageOptions for it, and the
    standard AWS variables point at it for this process and every process it starts (Ray)."""

    def __init__(self, bucket: str = "bench"):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self._proc = mp.get_context("spawn").Process(
            target=_serve, args=(self.port, os.getpid()), daemon=True
        )

    def __enter__(self) -> LocalS3:
        self._proc.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or not self._proc.is_alive():
                    self.close()
                    raise RuntimeError(f"moto S3 server did not start on {self.endpoint}") from None
                time.sleep(0.2)
        os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            os.environ.pop(var, None)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=10)

    @property
    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint, region=REGION, key=KEY, secret=SECRET,
                              retries=3, backoff_s=0.05)  # fmt: skip

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=KEY, aws_secret_access_key=SECRET)  # fmt: skip

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put_many(self, objects: dict[str, bytes], threads: int = 8) -> None:
        client = self.client()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=self.bucket, Key=kv[0], Body=kv[1]),
                          objects.items()))  # fmt: skip

    def put_table(self, key: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.client().put_object(Bucket=self.bucket, Key=key, Body=buf.getvalue())
        return self.uri(key)


_SHARED: list[LocalS3] = []


def local_s3() -> LocalS3:
    """One started server per process, stopped at exit: workloads run in one process (smoke)
    share it, each under its own key prefix."""
    if not _SHARED:
        import atexit

        _SHARED.append(LocalS3().__enter__())
        atexit.register(_SHARED[0].close)
    return _SHARED[0]


def mask_png(mask: np.ndarray) -> bytes:
    """A bool mask as an 8-bit greyscale PNG, the usual way masks arrive."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(out, "PNG", compress_level=6)
    return out.getvalue()


def upload_rows(s3: LocalS3, prefix: str, rows: int, width: int, height: int,
                coverage: float = 0.10, distinct: int = 16) -> pa.Table:  # fmt: skip
    """`rows` JPEG photos (q92, `distinct` different ones) with their own LaMa-style PNG masks
    (<= `coverage` of the frame) under s3://bucket/prefix/; returns the manifest table."""
    photos = [
        codec.encode_image(rec.sample_image(height, width, i), "jpeg", quality=92)
        for i in range(min(distinct, rows))
    ]
    objects, ids, images, masks = {}, [], [], []
    for i in range(rows):
        img_key, mask_key = f"{prefix}/images/{i:05d}.jpg", f"{prefix}/masks/{i:05d}.png"
        objects[img_key] = photos[i % len(photos)]
        objects[mask_key] = mask_png(random_mask(height, width, i, max_coverage=coverage))
        ids.append(f"row-{i:05d}")
        images.append(s3.uri(img_key))
        masks.append(s3.uri(mask_key))
    s3.put_many(objects)
    return pa.table({"id": ids, "image": images, "mask": masks})
