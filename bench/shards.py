"""s1: the same rows as files with a manifest, as Parquet shards with the bytes inside and as
WebDataset tars, through the whole job (opencv), on local disk and a local S3 server.

Data (made once into a cache folder): `--rows` rows of `--size`² (64 distinct PNG pictures, 8
masks, round-robin) as `images/`+`masks/` files and a manifest, as `--shards` Parquet shards
(the `datasets` Image struct {bytes, path} for image and mask, an id column, a caption) and as
as many tars (`<key>.png`, `<key>.mask.png`, `<key>.json`). Per layout:

- a whole run in a child process (bench/c3.py's driver): rows/s, steady rows/s (first result
  batch to last), the driver's peak RSS (VmHWM; the local executor's stages run in it too);
- objects the run wrote, per 1,000 rows (goal <= 2; files: one per row and a few more);
- a resume planned on the finished output (no Ray; bench/c3.py's plan): seconds, peak RSS, and
  its LIST calls: counted on the wire through a counting proxy in front of the S3 server, and for
  local disk the listings' objects / 1,000 (a LIST call returns at most 1,000 keys); the same
  scaled to 10 M rows (`--shards` keeps its rows per shard).

`python -m bench s1` (100,000 rows in 100 shards; S3 at `--s3-rows`, 10,000, in 10 shards),
`--rows N --shards N`, `--sources files,s3`, `--variants files,parquet` (layouts), `--executor local|ray` (default local: the same
in-process runner for every layout), `--cache-dir DIR`.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import record as rec
from .c3 import _child

LAYOUTS = ("files", "parquet", "webdataset")
BIG = 10_000_000
OBJECTS_GOAL = 2.0  # objects written per 1,000 rows, shard layouts


def _pictures(size: int) -> tuple[list[bytes], list[bytes]]:
    import cv2

    pictures = [
        cv2.imencode(".png", rec.sample_image(size, size, s))[1].tobytes() for s in range(64)
    ]
    masks = []
    for k in range(8):
        mask = np.zeros((size, size), np.uint8)
        mask[size // 8 + k : size // 3 + k, size // 5 : size // 2] = 255
        masks.append(cv2.imencode(".png", mask)[1].tobytes())
    return pictures, masks


def make_data(root: Path, rows: int, shards: int, size: int) -> dict[str, Path]:
    """root/{files,parquet,webdataset}: one set of rows three ways; made once (root/ready)."""
    import webdataset as wds

    where = {"files": root / "files" / "manifest.parquet", "parquet": root / "parquet",
             "webdataset": root / "webdataset"}  # fmt: skip
    if (root / "ready").exists():
        return where
    shutil.rmtree(root, ignore_errors=True)
    pictures, masks = _pictures(size)
    files = root / "files"
    (files / "images").mkdir(parents=True)
    (files / "masks").mkdir()
    ids = [f"s1-{i:07d}" for i in range(rows)]
    for i in range(rows):
        (files / "images" / f"{i:07d}.png").write_bytes(pictures[i % 64])
        (files / "masks" / f"{i:07d}.png").write_bytes(masks[i % 8])
    pq.write_table(pa.table({"id": ids, "image": [f"images/{i:07d}.png" for i in range(rows)],
                             "mask": [f"masks/{i:07d}.png" for i in range(rows)]}),
                   where["files"])  # fmt: skip
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    where["parquet"].mkdir()
    where["webdataset"].mkdir()
    for s in range(shards):
        lo, hi = s * rows // shards, (s + 1) * rows // shards
        table = pa.table({
            "id": ids[lo:hi],
            "image": pa.array([{"bytes": pictures[i % 64], "path": f"{i:07d}.png"}
                               for i in range(lo, hi)], image),
            "mask": pa.array([{"bytes": masks[i % 8], "path": None} for i in range(lo, hi)], image),
            "caption": [f"row {i}" for i in range(lo, hi)],
        })  # fmt: skip
        pq.write_table(table, where["parquet"] / f"train-{s:05d}.parquet")
        with wds.TarWriter(str(where["webdataset"] / f"{s:05d}.tar"), encoder=False) as tar:
            for i in range(lo, hi):
                tar.write({"__key__": ids[i], "png": pictures[i % 64], "mask.png": masks[i % 8],
                           "json": json.dumps({"caption": f"row {i}"}).encode()})  # fmt: skip
    (root / "ready").write_text("")
    return where


def spec(manifest: str, output: str, flush_rows: int, executor: str, **extra) -> dict:
    return {"manifest": manifest, "output": output, "backend": "opencv", "device": "cpu",
            "executor": executor, "image_format": "png", "png_compress_level": 1,
            "progress_interval_s": 0.0, "flush_rows": flush_rows, "resume": True,
            **({"address": "local", "min_actors": 1, "max_actors": 1} if executor == "ray" else {}),
            **extra}  # fmt: skip


class ListCounter:
    """A reverse proxy in front of the S3 server that counts requests: LIST (GET with
    list-type= or prefix=), and every method."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.counts: dict[str, int] = {}
        lock, counter = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = self.path.partition("?")[2]
                listing = self.command == "GET" and ("list-type=" in query or "prefix=" in query)
                with lock:
                    key = "LIST" if listing else self.command
                    counter.counts[key] = counter.counts.get(key, 0) + 1
                conn = http.client.HTTPConnection(counter.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body or None, headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                head = self.command == "HEAD"  # its Content-Length is the object's
                for k, v in reply.getheaders():
                    skip = ("transfer-encoding", "connection") + (
                        () if head else ("content-length",)
                    )
                    if k.lower() not in skip:
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _local_objects(output: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for folder, _, names in os.walk(output):
        top = Path(folder).relative_to(output).parts
        key = top[0] if top else "."
        counts[key] = counts.get(key, 0) + len(names)
    return counts


def _s3_objects(s3, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    pages = (
        s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/")
    )
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :]
            key = rel.split("/", 1)[0] if "/" in rel else "."
            counts[key] = counts.get(key, 0) + 1
    return counts


def _upload(s3, prefix: str, data: dict[str, Path]) -> dict[str, str]:
    """The three layouts under s3://bucket/prefix/; returns each one's manifest URI."""
    objects = {}
    for layout, path in data.items():
        folder = path.parent if layout == "files" else path
        for f in folder.rglob("*"):
            if f.is_file():
                objects[f"{prefix}/{layout}/{f.relative_to(folder)}"] = f.read_bytes()
    s3.put_many(objects, threads=16)
    return {"files": s3.uri(f"{prefix}/files/manifest.parquet"),
            "parquet": s3.uri(f"{prefix}/parquet/"),
            "webdataset": s3.uri(f"{prefix}/webdataset/")}  # fmt: skip


def one_layout(layout: str, manifest: str, out: str, where: str, rows: int, shards: int,
               args, runs: Path, s3=None) -> dict:  # fmt: skip
    flush = min(1000, max(50, rows // 20))
    extra = {"endpoint_url": s3.endpoint, "region": "us-east-1"} if s3 else {}
    tag = f"{where}-{layout}"
    run = _child("drive", spec(manifest, out, flush, args.executor, **extra), runs / f"{tag}.log")
    objects = _s3_objects(s3, out.split("/", 3)[3]) if s3 else _local_objects(Path(out))
    written = sum(objects.values())
    counter = ListCounter(s3.endpoint) if s3 else None
    try:
        plan_extra = {**extra, "endpoint_url": counter.url} if counter else {}
        planned = _child("plan", spec(manifest, out, flush, args.executor, **plan_extra),
                         runs / f"{tag}-plan.log")  # fmt: skip
    finally:
        if counter:
            counter.close()
    listed = sum(objects.get(k, 0) for k in ("images", "data", "metadata"))
    per_shard = rows / shards
    scale = BIG / rows
    big_listed = sum(objects.get(k, 0) * (1 if k == "metadata" else scale)
                     for k in ("images", "data", "metadata"))  # fmt: skip
    row = {"where": where, "layout": layout, "rows": rows, "shards": shards if layout != "files" else None,
           "ok": (run.get("counts") or {}).get("ok"), "seconds": run["wall_s"],
           "rows_per_s": round(rows / run["wall_s"], 1), "steady_rows_per_s": run.get("steady_rows_per_s"),
           "driver_peak_rss_mib": run.get("peak_rss_mib"), "objects_written": written,
           "objects_per_1000_rows": round(written * 1000 / rows, 2),
           "plan_resume_s": planned["seconds"], "plan_peak_rss_mib": planned["peak_rss_mib"],
           "plan_todo": planned["todo"],
           "list_calls_resume": counter.counts.get("LIST") if counter else None,
           "list_calls_resume_computed": sum(math.ceil(objects.get(k, 0) / 1000)
                                             for k in ("images", "data", "metadata")),
           "list_calls_resume_10M_computed": math.ceil(big_listed / 1000),
           "rows_per_shard": per_shard if layout != "files" else None,
           "requests_plan": dict(counter.counts) if counter else None,
           "objects_listed": listed, "success": run.get("success")}  # fmt: skip
    print(rec.table([row]), flush=True)
    return row


def s1(args) -> rec.Record:
    rows = args.rows or 100_000
    shards = getattr(args, "shards", None) or max(1, rows // 1000)
    s3_rows = getattr(args, "s3_rows", None) or max(1, rows // 10)
    sources = (args.sources or "files,s3").split(",")
    layouts = [x for x in LAYOUTS if not args.variants or x in args.variants.split(",")]
    args.executor = args.executor or "local"
    size = args.size or 64
    cache = Path(args.cache_dir or Path(tempfile.gettempdir()) / "batch-inpaint-s1")
    r = rec.Record("s1", f"shards: {rows} rows of {size}² as files, Parquet and WebDataset "
                   f"({shards} shards), opencv; local S3 at {s3_rows} rows",
                   rec.device_name("cpu"),
                   {"rows": rows, "shards": shards, "size": size, "s3_rows": s3_rows,
                    "sources": sources, "executor": args.executor, "backend": "opencv",
                    "cpus": rec.cores(), "image_format": "png/1"},
                   notes=["LIST calls: a listing returns at most 1,000 keys a call; measured on "
                          "the wire for S3 (a counting proxy), computed from the objects listed "
                          "for local disk and for 10 M rows (rows per shard kept)."])  # fmt: skip
    runs = cache / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    if "files" in sources:
        data = make_data(cache / f"data-{rows}-{shards}-{size}", rows, shards, size)
        for layout in layouts:
            manifest = str(data[layout]) + ("/" if layout != "files" else "")
            r.rows.append(one_layout(layout, manifest, str(runs / f"out-{layout}"), "files",
                                     rows, shards, args, runs))  # fmt: skip
    if "s3" in sources:
        from .s3local import NOTE, local_s3

        s3_shards = max(1, shards * s3_rows // rows)
        data = make_data(cache / f"data-{s3_rows}-{s3_shards}-{size}", s3_rows, s3_shards, size)
        s3 = local_s3()
        uris = _upload(s3, f"s1-{s3_rows}", data)
        for layout in layouts:
            out = s3.uri(f"s1-{s3_rows}/out-{layout}")
            r.rows.append(one_layout(layout, uris[layout], out, "s3", s3_rows, s3_shards, args,
                                     runs, s3))  # fmt: skip
        r.notes.append(NOTE)
    for x in r.rows:
        key = f"{x['where']}_{x['layout']}"
        files = next(
            (y for y in r.rows if y["where"] == x["where"] and y["layout"] == "files"), None
        )
        if files and x["layout"] != "files":
            r.ratios[f"rows_per_s_{key}_vs_files"] = round(x["rows_per_s"] / files["rows_per_s"], 3)
            r.goals[f"objects_per_1000_rows_{key}_le_{OBJECTS_GOAL:g}"] = (
                x["objects_per_1000_rows"] <= OBJECTS_GOAL
            )
        r.ratios[f"list_calls_resume_10M_{key}"] = x["list_calls_resume_10M_computed"]
    load = max(r.load_average[0], os.getloadavg()[0])
    if load > 0.5 * rec.cores():
        r.notes.append(f"BUSY MACHINE: load average up to {load:.1f} on {rec.cores()} cores "
                       "(other work running): wall times are from a shared machine.")  # fmt: skip
    return r
