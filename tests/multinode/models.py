"""The injected model of the multi-node tests: OpenCV, slowed down so rows are still in flight
when a node is removed, and recording on which Ray node each actor and each call ran."""

from __future__ import annotations

import json
import os
import time

from batch_inpaint.models.opencv_backend import OpenCVInpainter


class RecordingInpainter(OpenCVInpainter):
    """Appends JSON lines to `{record_dir}/model-<pid>.jsonl`: at load, as a model call starts
    and as it ends (event load, call, done), each with the node id, the GPU ids Ray gave the
    actor, its pid and the time; calls say how many pieces they got."""

    def __init__(self, record_dir: str, delay_s: float):
        super().__init__()
        import ray

        self.delay_s = delay_s
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.gpus = [str(g) for g in ray.get_gpu_ids()]
        self.path = os.path.join(record_dir, f"model-{os.getpid()}.jsonl")
        self._write({"event": "load"})

    def _write(self, body: dict) -> None:
        line = json.dumps({**body, "node": self.node_id, "gpus": self.gpus, "pid": os.getpid(),
                           "t": time.time()})  # fmt: skip
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def inpaint(self, images, *args, **kwargs):
        self._write({"event": "call", "pieces": len(images)})
        time.sleep(self.delay_s)  # keeps rows in flight long enough for the fault
        out = super().inpaint(images, *args, **kwargs)
        self._write({"event": "done", "pieces": len(images)})
        return out


def recording(record_dir: str, delay_s: float, ctx) -> RecordingInpainter:
    """The inpainter_factory (with functools.partial): module level, so Ray can ship it."""
    return RecordingInpainter(record_dir, delay_s)


def read_records(record_dir: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(record_dir)):
        if name.startswith("model-") and name.endswith(".jsonl"):
            with open(os.path.join(record_dir, name)) as f:
                rows += [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["t"])
