"""The Ray Data job: the only module that imports ray. It wires the Ray-free stages into a graph,

    read_parquet -> drop finished rows -> prepare (CPU tasks) -> model (actor pool, GPU or CPU)
                 -> finish: paste, encode, write (CPU tasks) -> driver: metadata parts, finalize

and streams only small result rows back to the driver; pixels stay in Ray's object store.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from batch_inpaint import __version__
from batch_inpaint.config import JobConfig
from batch_inpaint.errors import InpaintError
from batch_inpaint.job import report, results
from batch_inpaint.job.lock import OutputLock
from batch_inpaint.job.scan import scan_manifest
from batch_inpaint.job.stages import JobContext, ModelStage, finish_batch, prepare_batch
from batch_inpaint.storage.store import Storage
from batch_inpaint.storage.uri import join, redact_uri, same_location


def run_job(config: JobConfig, *, echo=print) -> dict:
    """Run one job to the end and return its summary (also written to `{output}/run.json`)."""
    cfg = config.require_io().validate()
    storage = Storage(cfg.storage_options())
    storage.check(cfg.manifest)
    storage.check(cfg.output)
    started = time.time()
    run_id = results.new_run_id()
    scan = scan_manifest(storage, cfg)  # reads the id column only: cheap, fails fast on schema
    lock = OutputLock(storage, cfg.output, ttl_s=cfg.lock_ttl_s) if cfg.incremental else None
    if lock is not None:
        lock.acquire()
    try:
        return _run(cfg, storage, scan, run_id, started, echo)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg, storage, scan, run_id, started, echo) -> dict:
    import ray

    done = (
        results.done_ids(storage, cfg.output, cfg.retry_errors, check_outputs=True)
        if cfg.resume
        else set()
    )
    exclude = frozenset(done) | frozenset(scan.duplicates)
    todo = sum(1 for i in scan.ids if i and i not in exclude)
    echo(
        f"batch-inpaint: {len(scan.ids)} manifest rows, {len(done & set(scan.ids))} already done, "
        f"{scan.bad_rows.num_rows} with a duplicate or missing id, {todo} to process -> {cfg.output}"
    )
    _init_ray(cfg)
    gpus = _gpus_per_actor(cfg, ray.cluster_resources().get("GPU", 0), echo)
    device = cfg.device if cfg.device != "auto" else ("cuda" if gpus > 0 else "cpu")
    cfg_run = JobConfig.from_dict({**cfg.to_dict(), "device": device})
    ctx = JobContext(
        config=cfg_run,
        storage=storage,
        manifest_base=scan.base,
        native_size=native_size(cfg),
        model_info=model_info(cfg),
    )
    storage.write_bytes(join(cfg.output, "job.json"), results.dumps(job_json(cfg, run_id)))
    writer = results.MetadataWriter(
        storage, cfg.output, run_id, cfg.flush_rows, cfg.flush_interval_s
    )
    bad_rows = scan.bad_rows
    for name, value in ctx.model_info.items():  # same columns as every other result row
        if bad_rows.num_rows:
            bad_rows = bad_rows.append_column(
                name, pa.array([value] * bad_rows.num_rows, pa.string())
            )
    writer.add(bad_rows)
    processed = errors = 0
    t_last = t_first = time.time()
    if todo:
        ds = build_dataset(cfg_run, ctx, storage, exclude, gpus)
        # No prefetch: with it, Ray Data hands over a finished block only once the next one is
        # ready, so its rows reach a metadata part a whole block later (lost if killed meanwhile).
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
            writer.add(batch)
            processed += batch.num_rows
            errors += pc.sum(pc.equal(batch.column("status"), "error")).as_py() or 0
            if time.time() - t_last >= cfg.progress_interval_s:
                t_last = time.time()
                rate = processed / max(t_last - t_first, 1e-9)
                echo(f"progress: {processed}/{todo} rows, {rate:.2f} rows/s, {errors} errors")
    writer.flush()
    return finalize(cfg, storage, scan, run_id, started, processed, echo)


BLOCK_BATCHES = 2  # model batches per block: the unit of streaming, retry and progress


def build_dataset(cfg: JobConfig, ctx: JobContext, storage: Storage, exclude, gpus: float):
    import ray

    fs, path = storage.pyarrow_filesystem(cfg.manifest)
    ds = ray.data.read_parquet(path, filesystem=fs)
    # Always: rows without an id never reach the stages (the driver wrote their error rows).
    ds = ds.map_batches(drop_rows, batch_format="pyarrow", fn_kwargs={"exclude": exclude})
    # A small manifest file is one read block, and Ray Data keeps a task's small outputs in one
    # block: one actor would get every row and the driver would see none until the end (no
    # parallel actors, no metadata parts, a killed run loses everything). Blocks of a couple of
    # model batches stream through the pool instead.
    ds = ds.repartition(target_num_rows_per_block=BLOCK_BATCHES * max(cfg.batch_size, 8))
    ds = ds.map_batches(
        prepare_batch,
        batch_format="pyarrow",
        batch_size=8,
        fn_kwargs={"ctx": ctx},
        num_cpus=cfg.cpus_per_task,
    )
    ds = ds.map_batches(
        ModelStage,
        batch_format="pyarrow",
        batch_size=max(cfg.batch_size, 8),
        fn_constructor_kwargs={"ctx": ctx},
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        num_gpus=gpus or None,
        num_cpus=cfg.cpus_per_actor,
    )
    return ds.map_batches(
        finish_batch,
        batch_format="pyarrow",
        batch_size=8,
        fn_kwargs={"ctx": ctx},
        num_cpus=cfg.cpus_per_task,
    )


def drop_rows(table: pa.Table, exclude: frozenset) -> pa.Table:
    ids = pc.cast(table.column("id"), pa.string())
    keep = pc.and_(
        pc.invert(pc.is_in(ids, value_set=pa.array(sorted(exclude), pa.string()))),
        pc.greater(pc.utf8_length(pc.fill_null(ids, "")), 0),
    )
    return table.filter(keep)


def finalize(cfg, storage, scan, run_id, started, processed, echo) -> dict:
    """Compact the metadata to one row per id, check the invariants, write run.json, the report,
    and `_SUCCESS` only when every check passes."""
    table, parts, bad_parts = results.read_results(storage, cfg.output)
    if table is None:
        table = pa.table({"id": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    in_manifest = pc.is_in(table.column("id"), value_set=pa.array(scan.result_ids, pa.string()))
    table = table.filter(in_manifest)  # rows of ids no longer in the manifest stay out
    ok_outputs = [
        u
        for u, s in zip(
            table.column("output").to_pylist(), table.column("status").to_pylist(), strict=True
        )
        if s in results.DONE and u
    ]
    # Each object was checked to decode before it was written (stages.finish_batch), so here a
    # listing suffices: it proves every ok row's object exists without reading millions back.
    missing, removed = reconcile_images(storage, cfg.output, set(ok_outputs))
    bad_outputs = {uri: "missing: no object under images/" for uri in sorted(missing)}
    if table.num_rows:
        results.compact(storage, cfg.output, table, parts, run_id)
    check = results.check_invariants(table, scan.result_ids, bad_outputs)
    summary = results.summarize(table, started, time.time(), processed) if table.num_rows else {}
    summary.update(
        run_id=run_id,
        output=cfg.output,
        success=check.ok,
        problems=check.problems,
        unreadable_metadata_parts=bad_parts,
        orphans_removed=removed,
    )
    storage.write_bytes(join(cfg.output, "run.json"), results.dumps(summary))
    report_uri = report.write_report(storage, cfg, table, summary)
    success_uri = join(cfg.output, "_SUCCESS")
    if check.ok:
        storage.write_bytes(success_uri, results.dumps({"run_id": run_id, "rows": table.num_rows}))
    elif storage.exists(success_uri):
        storage.delete(success_uri)
    echo(report.summary_text(summary, report_uri))
    return summary


def reconcile_images(storage, output: str, keep: set[str]) -> tuple[set[str], int]:
    """One listing of images/: the kept URIs that have no object (missing), and the objects no
    result row points to (a killed run's last rows, an older run's other format), which are
    removed so the output holds exactly what the metadata says."""
    try:
        found = storage.list(join(output, "images"))
    except InpaintError:
        found = []
    keep_paths = {same_location(u): u for u in keep}
    seen = set()
    removed = 0
    for uri in found:
        path = same_location(uri)
        if path in keep_paths:
            seen.add(path)
        else:
            storage.delete(uri)
            removed += 1
    return {u for p, u in keep_paths.items() if p not in seen}, removed


def native_size(cfg: JobConfig) -> int | None:
    """Side the model was trained at, read from the checkpoint's config without loading it."""
    if cfg.crop_size:
        return cfg.crop_size
    if cfg.backend == "opencv":
        return None
    if cfg.model and Path(cfg.model, "unet", "config.json").is_file():
        unet = json.loads(Path(cfg.model, "unet", "config.json").read_text())
        vae = json.loads(Path(cfg.model, "vae", "config.json").read_text())
        return int(unet.get("sample_size", 64)) * 2 ** (
            len(vae.get("block_out_channels", [0] * 4)) - 1
        )
    if cfg.backend == "tiny":
        return 64  # the tiny checkpoint: UNet sample_size 32, two VAE blocks
    return 512


def model_info(cfg: JobConfig) -> dict:
    from batch_inpaint.models import TINY_MODEL_ID
    from batch_inpaint.models.diffusers_backend import DEFAULT_MODEL

    default = {"diffusers": DEFAULT_MODEL, "tiny": TINY_MODEL_ID, "opencv": "opencv-telea"}
    return {
        "backend": cfg.backend,
        "model": cfg.model or default[cfg.backend],
        "revision": cfg.revision,
    }


def job_json(cfg: JobConfig, run_id: str) -> dict:
    """The config (no secret ever enters it) and the versions that made the outputs."""
    versions = {"batch_inpaint": __version__, "python": platform.python_version()}
    for mod in ("torch", "diffusers", "ray", "transformers", "pyarrow"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    config = cfg.to_dict()
    for name in ("manifest", "output", "model", "endpoint_url", "address"):
        if config.get(name):  # user:password@ and presigned signatures stay out of outputs
            config[name] = redact_uri(config[name])
    return {
        "run_id": run_id,
        "config": config,
        "versions": versions,
        "storage": cfg.storage_options().to_public_dict(),
    }


def _gpus_per_actor(cfg: JobConfig, cluster_gpus: float, echo=print) -> float:
    """GPUs per model actor: as configured; else 1 for device cuda or when the cluster has GPUs;
    else 0 (CPU actors, fp32). A cluster whose GPU workers autoscale from zero shows no GPU at
    start: ask for them with gpus_per_actor: 1 or device: cuda."""
    if cfg.gpus_per_actor is not None:
        if cfg.gpus_per_actor > 0 and cluster_gpus == 0:
            echo(
                f"batch-inpaint: gpus_per_actor={cfg.gpus_per_actor} but the cluster has no GPU "
                "yet; the actors wait for the autoscaler to add GPU workers"
            )
        return cfg.gpus_per_actor
    if cfg.device == "cpu" or cfg.backend == "opencv":
        return 0.0
    if cfg.device == "cuda" or cluster_gpus >= 1:
        return 1.0
    echo(
        "batch-inpaint: the cluster has no GPU, so the model runs on CPU actors (fp32, slow); "
        "on a cluster whose GPU workers autoscale from zero, pass --gpus-per-actor 1"
    )
    return 0.0


def _init_ray(cfg: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # No address: join the cluster this runs on (ray job submit sets RAY_ADDRESS), else start one.
    ray.init(address=cfg.address, log_to_driver=True, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = (
        os.environ.get("BATCH_INPAINT_PROGRESS_BARS", "1") == "1"
    )
