"""How much of the cluster each stage of a run asks for, decided on the driver from the cluster's
resources before the graph is built (no Ray import: tests call it with made-up clusters).

Ray Data starts every actor pool at its smallest size when the run begins, and its listing and
read tasks ask for one CPU each (fixed in Ray 2.60). If the first actors of the model, detect and
verify pools take every CPU, the read task never starts and the run waits for ever. So the CPU
shares left unset are 1 where the cluster has room, else an equal part of what is left after one
CPU for the read tasks.

A GPU pool starts at the size the cluster's GPUs allow (`initial_actors`): Ray Data grows a pool
one actor at a time from its minimum, so a pool of min_size 1 began on one GPU of many."""

from __future__ import annotations

import dataclasses
import math

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError
from batch_inpaint.job.stages import detect as detect_stage

READ_CPUS = 1.0  # Ray Data's listing and read tasks: one CPU each, not configurable

# Memory one CPU model actor holds, in GiB: diffusers measured (bench sd2-job: SD2 in fp32,
# 6.0 GiB peak RSS); the others are upper guesses. A fused pool takes at most half the
# cluster's memory, so a laptop running SD on its CPU gets one actor, not one per core.
CPU_ACTOR_GIB = {"opencv": 0.5, "tiny": 0.5, "lama": 1.5, "diffusers": 6.5}


@dataclasses.dataclass(frozen=True)
class DetectPlan:
    """The detect stage of a job with queries (job/stages/detect.py): its actors' share."""

    queries: tuple[str, ...]
    gpus: float
    provider_factory: object = None
    pools: int = 1  # 2 with verify: its pool is the detect pool's twin


def plan_resources(
    cfg: JobConfig, resources: dict, storage, provider_factory=None, echo=print, fixed=False
):
    """(config as this run uses it, GPUs per model actor, DetectPlan or None) for a cluster
    with `resources` (ray.cluster_resources()). The config has device, fuse_stages,
    max_actors and the CPU shares resolved. `fixed`: the cluster never grows (a private local
    instance), so pools that can't all start are a ConfigError, not a wait."""
    gpus = gpus_per_actor(cfg, resources.get("GPU", 0), echo)
    device = cfg.device if cfg.device != "auto" else ("cuda" if gpus > 0 else "cpu")
    cfg = dataclasses.replace(cfg, device=device)
    detect = detect_plan(cfg, storage, provider_factory, resources, echo)
    if detect and detect.gpus and cfg.gpus_per_actor is None and gpus >= 1:
        # Unset shares: one GPU holds a model actor and the detect (and verify) actors,
        # else on a one-GPU node they would wait on each other for ever.
        gpus = max(1.0 - detect.gpus * detect.pools, 0.25)
    pools = detect.pools if detect else 0
    held = gpu_actors(gpus, resources.get("GPU", 0), detect)
    cfg = pool(cfg, gpus, resources.get("CPU", 0), resources.get("memory"), pools, held)
    check_room(cfg, detect, gpus, resources, echo, fixed)
    return cfg, gpus, detect


def gpus_per_actor(cfg: JobConfig, cluster_gpus: float, echo=print) -> float:
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


def gpu_actors(gpus: float, cluster_gpus: float, detect: DetectPlan | None = None) -> int:
    """Model actors of `gpus` GPUs each that the cluster's GPUs hold now, beside the first detect
    (and verify) actors' shares; 0 for CPU actors or a cluster with no GPU yet. A fractional
    share packs within one GPU (Ray never splits an actor across two), so 0.75 holds one per GPU.
    Nodes are not looked at: an actor that does not fit waits, as any other would."""
    if gpus <= 0 or cluster_gpus <= 0:
        return 0
    free = cluster_gpus - (detect.gpus * detect.pools if detect else 0.0)
    held = math.floor(free / gpus + 1e-9)
    if gpus < 1:
        held = min(held, math.floor(cluster_gpus + 1e-9) * math.floor(1 / gpus + 1e-9))
    return max(held, 0)


def initial_actors(cfg: JobConfig, held: int) -> int:
    """The model pool's starting size: every actor the GPUs hold (`gpu_actors`), within
    min_actors and max_actors; a CPU pool, or a cluster whose GPUs are still to come, starts at
    min_actors and grows as Ray Data sees fit."""
    most = cfg.max_actors if cfg.max_actors is not None else max(held, cfg.min_actors)
    return max(cfg.min_actors, min(held, most))


def start_size(cfg: JobConfig, gpus: float, resources: dict, detect: DetectPlan | None) -> int:
    """ActorPoolStrategy's initial_size for the model pool of a config plan_resources resolved,
    on a cluster with `resources` (never above its max_actors)."""
    held = gpu_actors(gpus, resources.get("GPU", 0), detect)
    return min(initial_actors(cfg, held), cfg.max_actors or cfg.min_actors)


def detect_plan(
    cfg: JobConfig, storage, provider_factory, resources: dict, echo=print
) -> DetectPlan | None:
    """None for a job without queries; else the detect actors' GPU share: as configured, else
    0.25 when the cluster has GPUs (the detector is small beside the inpainting model), else 0."""
    queries = detect_stage.job_queries(storage, cfg)
    if not queries:
        return None
    gpus = cfg.detection.gpus_per_detect_actor
    if gpus is None:
        gpus = 0.25 if resources.get("GPU", 0) >= 1 and cfg.device != "cpu" else 0.0
    echo(f"batch-inpaint: detecting {', '.join(queries)} on "
         f"{'GPU' if gpus > 0 else 'CPU'} actors before inpainting")  # fmt: skip
    return DetectPlan(tuple(queries), gpus, provider_factory, 2 if cfg.detection.verify else 1)


def pool(
    cfg: JobConfig,
    gpus: float,
    cluster_cpus: float,
    cluster_memory: float | None = None,
    detect_pools: int = 0,
    gpu_actors: int = 0,
) -> JobConfig:
    """The config with fuse_stages, max_actors and the CPU shares as this run uses them.

    Unset, stages fuse when the model runs on CPU actors, and a fused CPU pool grows to one
    actor per cpus_per_actor CPUs (1 if unset) of what the detect pools leave (a laptop's cores
    all work), as far as half the cluster's memory (bytes, Ray's "memory" resource) holds
    them; a GPU pool grows to the `gpu_actors` the cluster's GPUs hold now (at least 1).
    Unset CPU shares: see shares(), counting every actor the pool starts with."""
    fuse = cfg.fuse_stages if cfg.fuse_stages is not None else gpus == 0
    starting = initial_actors(cfg, gpu_actors if gpus > 0 else 0)
    actor_cpus, detect_cpus = shares(cfg, cluster_cpus, detect_pools, fuse, starting)
    most = cfg.max_actors
    if most is None:
        most = gpu_actors if gpus > 0 else 1
        if fuse and gpus == 0:
            most = int((cluster_cpus - detect_cpus * detect_pools) // (cfg.cpus_per_actor or 1.0))
            if cluster_memory:
                per_actor = CPU_ACTOR_GIB.get(cfg.backend, 6.5) * 2**30
                most = min(most, int(cluster_memory / 2 // per_actor))
        most = max(most, cfg.min_actors, 1)
    return dataclasses.replace(
        cfg,
        fuse_stages=fuse,
        max_actors=most,
        cpus_per_actor=actor_cpus,
        detection=dataclasses.replace(cfg.detection, cpus_per_detect_actor=detect_cpus),
    )


def shares(
    cfg: JobConfig, cluster_cpus: float, detect_pools: int, fused: bool, actors: int = 0
) -> tuple[float, float]:
    """(cpus_per_actor, cpus_per_detect_actor) for this run. A share set is kept. Unset shares
    are 1 when the first actors of every pool (`actors` model actors, else min_actors) fit
    beside the read tasks' CPU; else they split what is left equally (2 CPUs, detect and
    verify: a third each). Where nothing is left (a cluster still to autoscale, or set shares
    that take it all) they stay 1, and check_room says the run waits."""
    wanted = [(cfg.cpus_per_actor, actors or cfg.min_actors),
              (cfg.detection.cpus_per_detect_actor, detect_pools)]  # fmt: skip
    room = cluster_cpus - _reserve(cfg, fused)
    room -= sum(share * n for share, n in wanted if share is not None)
    unset = sum(n for share, n in wanted if share is None)
    part = 1.0
    if unset and room > 0:
        part = min(1.0, math.floor(room / unset * 1e4) / 1e4)  # Ray counts in 1e-4 units
    actor, detect = (share if share is not None else part for share, _ in wanted)
    return actor, detect


def _reserve(cfg: JobConfig, fused: bool) -> float:
    """CPUs the actors must leave free: the read tasks', or the split graph's prepare and finish
    tasks' if those ask for more."""
    return max(READ_CPUS, 0.0 if fused else cfg.cpus_per_task)


def check_room(
    cfg: JobConfig, detect: DetectPlan | None, gpus: float, resources: dict, echo, fixed=False
):
    """Say so when the first actors of every pool and one read task can't all run at once: the
    run would wait for the autoscaler; on a `fixed` cluster it would wait for ever, so that is
    a ConfigError (exit 2) before any row is read."""
    pools = detect.pools if detect else 0
    cpus = cfg.detection.cpus_per_detect_actor * pools + cfg.cpus_per_actor * cfg.min_actors
    cpus += _reserve(cfg, cfg.fuse_stages)
    need_gpus = (detect.gpus * pools if detect else 0.0) + gpus * cfg.min_actors
    actors = "the detect and model actors" if detect else "the model actors"
    for what, need, flags in (
        ("CPU", cpus, "--cpus-per-actor / --cpus-per-detect-actor / --cpus-per-task"),
        ("GPU", need_gpus, "--gpus-per-actor / --gpus-per-detect-actor"),
    ):
        have = resources.get(what, 0)
        if need > have + 1e-9 and (what == "CPU" or have > 0 or fixed):
            extra = " and one read task" if what == "CPU" else ""
            said = f"{actors}{extra} need {need:g} {what}s, "
            if fixed:
                raise ConfigError(f"{said}this machine's private Ray instance has {have:g} and "
                                  f"never gets more: lower {flags}, or leave the CPU shares "
                                  "unset to fit them to the machine")  # fmt: skip
            echo(f"batch-inpaint: {said}the cluster has {have:g}: the job waits for more; "
                 f"lower {flags}")  # fmt: skip
