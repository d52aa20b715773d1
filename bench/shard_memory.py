"""What the driver holds for a shard output (job/io/shard_writer.py, ShardCommitter): the peak of
the inpainted images it keeps until their shard is whole, and the driver's peak RSS, for N
Parquet shards (the datasets Image struct) x R rows of SxS noise PNGs with a square mask, opencv.

    .venv/bin/python bench/shard_memory.py N R S local|ray     (e.g. 20 500 64 local)

The shard set is made once under /tmp/shard-memory/; each call runs the job into a fresh output.
Not a record (bench/shards.py, s1, records rows/s and peak RSS per layout)."""

import io
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from batch_inpaint.config import JobConfig
from batch_inpaint.job.io import shard_writer
from batch_inpaint.job.run import run_job


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def make(root: Path, n: int, r: int, s: int) -> None:
    rng = np.random.default_rng(0)
    m = np.zeros((s, s), np.uint8)
    m[s // 4 : s // 2, s // 4 : s // 2] = 255
    mask = _png(m)
    t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    (root / "in").mkdir(parents=True)
    for k in range(n):
        imgs = [{"bytes": _png(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)),
                 "path": f"{k}-{i}.png"} for i in range(r)]  # fmt: skip
        pq.write_table(pa.table({"image": pa.array(imgs, t),
                                 "mask": pa.array([{"bytes": mask, "path": None}] * r, t)}),
                       root / "in" / f"{k:05d}.parquet")  # fmt: skip


def main(n: int, r: int, s: int, executor: str) -> None:
    root = Path(f"/tmp/shard-memory/set-{n}-{r}-{s}")
    if not root.exists():
        make(root, n, r, s)
    shutil.rmtree(root / "out", ignore_errors=True)
    peak = [0]
    take = shard_writer.ShardCommitter.take

    def counted(self, batch):
        out = take(self, batch)
        peak[0] = max(peak[0], self.held_bytes())
        return out

    shard_writer.ShardCommitter.take = counted
    t0 = time.time()
    cfg = JobConfig(manifest=str(root / "in"), output=str(root / "out"), backend="opencv",
                    executor=executor)  # fmt: skip
    summary = run_job(cfg, echo=lambda *_: None)
    wall = time.time() - t0
    size = sum(p.stat().st_size for p in (root / "in").iterdir())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} shards x {r} rows of {s}^2 ({size / 1e6:.0f} MB of shards), executor {executor}: "
          f"{summary['counts']}, {n * r / wall:.0f} rows/s; committer peak held "
          f"{peak[0] / 1e6:.1f} MB; driver peak RSS {rss:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
