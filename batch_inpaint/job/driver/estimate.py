"""The dry run: what `run` would do and what its model passes would cost, found without starting Ray
and without writing anything (`batch-inpaint run --dry-run`, `batch_inpaint.plan_job(config)`).

It makes the driver's checks (the config, every manifest part, the output's location and owner),
reads the output's lock and results without taking or moving anything, counts the rows a run would
do after resume, validates a random sample of them (manifest/validation.py), and plans that sample
the way the prepare stage does (fetch, decode, mask, regions at the model spec's sizes): crop mode's
regions depend on each mask, so headers alone can't tell how many passes a row needs. The sample's
model passes per working size, scaled to the rows to do, give the estimate (job/driver/cost.py).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import error_kind
from batch_inpaint.job.driver import cost, plan, results
from batch_inpaint.job.driver.scan import has_id
from batch_inpaint.job.report.summary import lock_holder
from batch_inpaint.storage.uri import redact_uri
from batch_inpaint.vocab import Status

DEFAULT_SAMPLE = 64
SAMPLE_SHARDS = 2  # shards: the dry run validates this many (manifest validate does them all)


def plan_job(config: JobConfig, *, sample: int = DEFAULT_SAMPLE, gpu_hour_price: str | None = None,
             seed: int = 0, records_dir=None) -> dict:  # fmt: skip
    """What a run of `config` would do, as a JSON-ready dict; raises what `run` would raise
    before any cluster work (ConfigError: exit 2). Writes nothing and imports no Ray.

    `sample`: rows validated and planned (drawn with `seed`); `gpu_hour_price`: '2.5' for every
    GPU type or 'h100=3.5,a100=2'; `records_dir`: benchmark records (default bench/results/)."""
    from batch_inpaint.job.stages.context import JobContext
    from batch_inpaint.manifest.validation import validate_table
    from batch_inpaint.models.spec import model_spec
    from batch_inpaint.storage.store import Storage

    started = time.monotonic()
    prices = cost.parse_prices(gpu_hour_price)
    storage = Storage(config.storage_options())
    run, state = plan.check_run(config, storage, echo=lambda *_: None)
    cfg, scan = run.config, run.scan
    table, damaged = results.read_results(storage, cfg.output, dry_run=True)
    decision = plan.decide_from(run, table)  # columnar: no Python object per manifest row
    left = pc.and_(has_id(scan.ids), pc.invert(pc.is_in(scan.ids, value_set=decision.exclude)))
    todo = scan.ids.filter(left)
    spec = model_spec(cfg.backend, cfg.model, cfg.revision, storage=storage)
    at = random.Random(seed).sample(range(len(todo)), min(sample, len(todo)))  # as sample(todo)
    picked = sorted(todo.take(pa.array(at, pa.int64())).to_pylist())
    if scan.shard_of is not None and hasattr(run.source, "rows"):  # shards (job/io/shard_source.py)
        rows, report = _shard_rows(run, picked), _shard_validation(cfg, storage, seed)
    else:
        rows = _manifest_rows(storage, cfg, picked)
        report = (validate_table(rows, storage, base=scan.base, mask_options=cfg.mask)
                  if rows.num_rows else None)  # fmt: skip
    ctx = JobContext(cfg, storage, manifest_base=scan.base, spec=spec)
    planned = plan_sample(rows, ctx)
    held = lock_holder(storage, cfg.output, cfg.lock_ttl_s)
    out = {
        "dry_run": True,
        "manifest": redact_uri(cfg.manifest),
        "output": redact_uri(cfg.output),
        "output_state": {"new": "new (empty or absent)", "ours": "a batch-inpaint output",
                         "legacy": "a batch-inpaint output of an older version",
                         "adopted": "not empty; shared (--allow-non-empty-output)"}[state],
        "lock": None if not held else {k: held.get(k) for k in ("host", "pid", "age_s")},
        "damaged_results": damaged,
        "model": {**spec.describe(), "native_size": spec.native_size,
                  "size_multiple": spec.size_multiple, "spec_source": spec.source,
                  "family": spec.family},
        "settings": _settings(cfg),
        "rows": {"manifest": len(scan.ids), "done": decision.done,
                 "bad_ids": scan.bad_rows.num_rows, "to_do": len(todo)},
        "validation": _validation(report),
        "plan": planned,
    }  # fmt: skip
    out["estimate"] = estimate(out, cfg, cost.load_records(records_dir), prices)
    out["seconds"] = round(time.monotonic() - started, 2)
    return out


def _manifest_rows(storage, cfg: JobConfig, ids: list[str]) -> pa.Table:
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(cfg.manifest)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if not ids:
        return dataset.schema.empty_table()
    return dataset.to_table(filter=pc.field("id").isin(ids))


def _output_format(cfg: JobConfig) -> str:
    shards = cfg.output_format not in ("files", "auto")
    return f"{cfg.output_format} shards, {cfg.image_format}" if shards else cfg.image_format


def _shard_rows(run, ids: list[str]) -> pa.Table:
    """The sampled rows with their bytes, read from the shards that hold them only."""
    wanted = pa.array(ids, pa.string())
    held = run.scan.shard_of.filter(pc.is_in(run.scan.ids, value_set=wanted))
    tables = [t.filter(pc.is_in(t.column("id"), value_set=wanted))
              for t in map(run.source.rows, pc.unique(pc.cast(held, pa.string())).to_pylist())]  # fmt: skip
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def _shard_validation(cfg: JobConfig, storage, seed: int, shards: int = SAMPLE_SHARDS):
    """`manifest validate`'s checks on a few shards (job/io/shard_check.py)."""
    from batch_inpaint.job.io.shard_check import validate_shards
    from batch_inpaint.manifest.shard_set import find_shard_set

    keys = {k: getattr(cfg.shards, k) for k in ("image_column", "mask_column", "id_column",
                                                 "mask_member")}  # fmt: skip
    found = find_shard_set(cfg.manifest, storage, **keys)
    return validate_shards(found, sample=shards, queries=cfg.detection.detect,
                           mask_options=cfg.mask, seed=seed)  # fmt: skip


def plan_sample(rows: pa.Table, ctx) -> dict:
    """The sample through the prepare stage's own planning: per row, its status and the working
    sizes of its regions; model passes per working size and per row."""
    from batch_inpaint.job.stages.prepare import prepare_row

    sizes: Counter = Counter()
    status: Counter = Counter()
    kinds: Counter = Counter()
    per_row: list[list[tuple[int, int, int, float, float]]] = []
    for row in rows.to_pylist():
        try:
            item = prepare_row(row, ctx)
        except Exception as exc:  # noqa: BLE001 - a row that would fail: counted, not fatal
            status[Status.ERROR.value] += 1
            kinds[error_kind(exc)] += 1
            continue
        regions = item.regions or []
        status[Status.OK.value if regions else Status.SKIPPED.value] += 1
        g = item.params
        passes = []
        for r in regions:
            w, h = r.work_size
            sizes[f"{w}x{h}"] += 1
            passes.append((w, h, g.num_inference_steps, g.guidance_scale, g.strength))
        per_row.append(passes)
    n = sum(status.values())
    return {
        "sampled": n,
        "status": dict(status),
        "errors_by_kind": dict(kinds),
        "passes_by_size": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "passes_per_row": round(sum(sizes.values()) / n, 3) if n else 0.0,
        "_passes": per_row,  # for estimate(); removed there
    }


def estimate(out: dict, cfg: JobConfig, records: list[dict], prices: dict) -> dict:
    """Model time for the rows to do, scaled from the sample's passes."""
    plan_ = out["plan"]
    passes = plan_.pop("_passes")
    n, todo = plan_["sampled"], out["rows"]["to_do"]
    backend = out["model"]["backend"]
    notes: list[str] = []
    if not n:
        return {"method": "nothing to estimate: no row to do", "notes": notes}
    gpus_used = max(1, math.ceil((cfg.max_actors or 1) * (cfg.gpus_per_actor or 1)))
    px_rows = [sum(w * h for w, h, *_ in p) for p in passes]
    mean_px = sum(px_rows) / n  # per sampled row, errors and skips count as 0
    family = out["model"].get("family")
    if backend in ("diffusers", "tiny"):
        size = "an SDXL-inpainting-sized" if family == "sdxl" else "an SD2-sized"
        from batch_inpaint.models.tiny_sdxl import is_tiny_sdxl_dir

        if backend == "tiny" or (cfg.model and is_tiny_sdxl_dir(cfg.model)):
            notes.append(f"a tiny test checkpoint: figures are for {size} model at the same "
                         "working sizes, not for the tiny one itself")  # fmt: skip
        if family != "sdxl" and (out["model"]["native_size"] or 512) > 768:
            notes.append("FLOPs are SD2's; an SDXL-class model costs several times more: "
                         "treat these figures as a lower bound")  # fmt: skip
        flops = cost.SDFlops(next((r for r in records if r.get("workload") == "arch"), None),
                             family)  # fmt: skip
        per_row = sum(flops.per_pass(w * h, s, gs, st) for p in passes for w, h, s, gs, st in p) / n
        table = cost.gpu_table(per_row, todo, records, gpus_used, prices, "w1")
        g = cfg.inpaint_options().generation
        million = _per_million(plan_, family, lambda w, h: flops.per_pass(
            w * h, g.num_inference_steps, g.guidance_scale, g.strength), g.num_inference_steps,
            table, records, prices)  # fmt: skip
        if not any(r["source"].startswith("measured") for r in table["rows"] + million["rows"]):
            notes.append("no GPU benchmark has been recorded yet: every GPU figure is "
                          "extrapolated from FLOPs, not measured")  # fmt: skip
        return {"method": "FLOPs per model pass at each working size × rows to do",
                "flops_source": flops.source, "tflop_per_row": round(per_row, 3),
                "total_pflop": round(per_row * todo / 1000, 3), "gpu": table,
                "per_million_images": million, "notes": notes}  # fmt: skip
    rate, source = cost.cpu_rate(backend, records)
    scale = mean_px / cost.PX_512  # the recorded rates are for one 512² pass per row
    million = None
    if backend == "lama":
        per_row = cost.LAMA_512 * scale
        table = cost.gpu_table(per_row, todo, records, gpus_used, prices, "l2")
        million = _per_million(plan_, "lama", lambda w, h: cost.LAMA_512 * w * h / cost.PX_512,
                               None, table, records, prices)  # fmt: skip
        notes.append("LaMa on a GPU is extrapolated from its convolution FLOPs at the same "
                     "utilisation as SD2; its FFT layers may run at another")  # fmt: skip
    else:
        table = None
        notes.append(f"{backend} runs on CPUs; its cost follows the masked area, not the size")
    cpu = None
    if rate:
        core_hours = todo * scale / rate / 3600
        cpu = {"rows_per_s_per_core_at_512": round(rate, 3), "record": source,
               "core_hours": cost.sig(core_hours)}  # fmt: skip
    else:
        notes.append(source)
    return {"method": "recorded CPU rate scaled by working pixels", "cpu": cpu, "gpu": table,
            "per_million_images": million, "notes": notes}  # fmt: skip


def _per_million(plan_: dict, family, tflop_of, steps, table: dict, records, prices) -> dict:
    """Images/s per GPU and dollars per million images (one image: one model pass) at the
    sample's three commonest working sizes, per GPU type: measured where a GPU record has that
    family and size, else extrapolated from FLOPs at the table's utilisation."""
    sizes = [tuple(int(v) for v in k.split("x")) for k in list(plan_["passes_by_size"])[:3]]
    rows = cost.size_costs(family, sizes, tflop_of, steps, table["utilisation"], records, prices)
    extrapolated = sum(not r["source"].startswith("measured") for r in rows)
    return {"rows": rows, "extrapolated": extrapolated,
            "method": "measured on a GPU record" if not extrapolated else
            "extrapolated from FLOPs" if extrapolated == len(rows) else
            "measured where a GPU record has the size, else extrapolated from FLOPs"}  # fmt: skip


def _settings(cfg: JobConfig) -> dict:
    opts = cfg.inpaint_options()
    g, geo = opts.generation, opts.geometry
    return {"mode": geo.mode, "max_side": geo.max_side, "crop_size": geo.crop_size,
            "steps": g.num_inference_steps, "guidance": g.guidance_scale,
            "strength": g.strength, "output_format": _output_format(cfg),
            "resume": cfg.resume, "retry_errors": cfg.retry_errors,
            "max_actors": cfg.max_actors, "gpus_per_actor": cfg.gpus_per_actor}  # fmt: skip


def _validation(report) -> dict:
    if report is None:
        return {"rows_checked": 0, "objects_checked": 0, "problems": 0, "by_kind": {},
                "examples": [], "suspicious_masks": {}, "suspicious_examples": []}  # fmt: skip
    examples = [f"{p.row_id!r} {p.column}: {p.message}" for p in list(report)[:5]]
    odd = [f"{p.row_id!r} {p.kind}: {p.message}" for p in report.warnings[:5]]
    return {"rows_checked": report.rows, "objects_checked": report.rows_checked,
            "problems": len(report), "by_kind": report.counts(), "examples": examples,
            "suspicious_masks": report.warning_counts(), "suspicious_examples": odd}  # fmt: skip
