"""Which Ray cluster a run uses, and no Ray processes left behind by a local instance it started.

`connect()` joins `--address`, else RAY_ADDRESS (what `ray job submit` sets inside a job), else
starts a private local instance: `ray.init(address="local")`. A plain `ray.init()` would instead
join whatever cluster `ray start` last started on this machine (it reads
<temp dir>/ray/ray_current_cluster), and the run would die with that cluster.

A local instance gets a watchdog: a small process (this file run as a script, stdlib only) in its
own session that waits for the driver to end, then stops every process of that Ray session that is
still alive. Ray ties the GCS and raylet to the driver (PR_SET_PDEATHSIG), but after a SIGKILL its
dashboard and runtime-env agents linger (~215 MB, a minute here, longer on a busy machine) until
they give up reporting to the dead GCS; SIGTERM does not stop them, so the watchdog SIGKILLs.
The watchdog knows the session by its directory and node id, so other Ray instances on the machine
(another run's, a `ray start` cluster) are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_PREFIX = "batch-inpaint: Ray:"


@dataclass
class Cluster:
    """The Ray instance a run uses. `source`: "address" (--address), "env" (RAY_ADDRESS),
    "local" (a private instance this process started) or "existing" (Ray was already initialized
    in this process: used as it is and left running)."""

    source: str
    address: str  # GCS address of the instance in use
    session_dir: str | None = None
    node_id: str | None = None
    owned: bool = False  # this connect() initialized Ray here, so close() shuts it down
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)
    _pipe: int | None = field(default=None, repr=False)

    def close(self) -> None:
        """Disconnect (and, for a local instance, stop it); idempotent."""
        if not self.owned:
            return
        self.owned = False
        import ray

        ray.shutdown()
        if self._pipe is not None:
            # EOF tells the watchdog the driver is done: it stops what shutdown left, then exits.
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = None
        if self._watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=5)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(address: str | None = None, *, echo: Callable[[str], object] = print, **init_kwargs):
    """Initialize Ray for a run and return the Cluster; says in one line which one it uses.

    `address` (the --address flag) wins, then RAY_ADDRESS, else a private local instance with a
    watchdog; "local" asks for a private instance even when RAY_ADDRESS is set. `init_kwargs` go to ray.init (log_to_driver, logging_level, runtime_env, ...).
    A cluster that cannot be joined raises ConfigError naming the address and where it came from."""
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        cluster = Cluster("existing", ctx.gcs_address, _session_dir(), ctx.get_node_id())
        echo(f"{_PREFIX} using the instance already running in this process ({cluster.address})")
        _say_dashboard(echo)
        return cluster

    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address != "local":
        source, target, origin = "address", address, "--address"
    elif env_address and address != "local":
        source, target, origin = "env", env_address, "RAY_ADDRESS"
    else:
        source, target, origin = "local", "local", ""

    if source == "local":
        echo(
            f"{_PREFIX} starting a private local instance for this run "
            "(to use a cluster, pass --address or set RAY_ADDRESS)"
        )
    else:
        echo(f"{_PREFIX} joining the cluster at {target} (from {origin})")
        # ray.init waits minutes on an address where nothing listens: fail fast and clearly.
        problem = _unreachable(target)
        if problem:
            raise _join_error(target, origin, problem)
    try:
        # "local" always starts a new instance: ray.init then ignores RAY_ADDRESS and the
        # ray_current_cluster file that `ray start` writes.
        if source == "local":
            init_kwargs.setdefault("num_cpus", local_cpus())
        ray.init(address=target, **init_kwargs)
    except (ConnectionError, ValueError) as e:
        if source == "local":
            raise
        raise _join_error(target, origin, str(e)) from e

    ctx = ray.get_runtime_context()
    cluster = Cluster(source, ctx.gcs_address, _session_dir(), ctx.get_node_id(), owned=True)
    _say_dashboard(echo)
    if source == "local" and cluster.session_dir and sys.platform.startswith("linux"):
        try:
            cluster._watchdog, cluster._pipe = _start_watchdog(cluster.session_dir, cluster.node_id)
        except OSError as e:
            echo(
                f"{_PREFIX} could not start the watchdog ({e}); if this run is killed, stop "
                f"the processes of {cluster.session_dir} by hand"
            )
    return cluster


def dashboard_url() -> str | None:
    """The Ray dashboard's URL, or None (an instance started without it, Ray Client). As ray.init's
    own log line in Ray 2.60: RAY_OVERRIDE_DASHBOARD_URL wins, else the node's webui_url."""
    import ray

    url = os.environ.get("RAY_OVERRIDE_DASHBOARD_URL", "").strip()
    if not url:
        try:
            url = ray._private.worker._global_node.webui_url
        except AttributeError:  # no node in this process, or a Ray without the attribute
            url = None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def _say_dashboard(echo) -> None:
    url = dashboard_url()
    if url:
        echo(f"{_PREFIX} dashboard at {url}")


def local_cpus() -> int:
    """CPUs a private local instance declares: the machine's, and at least 2. Ray Data's read
    task takes one CPU and each actor pool starts with an actor of its own, so a one-core
    machine (a small VM or container) would wait for ever; Ray's CPUs are scheduling shares,
    and two shares on one core only take turns."""
    try:
        from ray._private.utils import get_num_cpus  # what Ray itself would declare

        cpus = get_num_cpus()
    except Exception:  # a private helper: fall back to the OS's count
        cpus = os.cpu_count() or 1
    return max(int(cpus), 2)


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a host:port address (None if something does, or if the address is
    another form, such as ray://... or "auto", which ray.init checks itself)."""
    m = re.fullmatch(r"\[?([\w.\-:]+?)\]?:(\d+)", address)
    if not m:
        return None
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach it ({e.strerror or e})"
    return None


def _join_error(target: str, origin: str, problem: str):
    from batch_inpaint.errors import ConfigError

    hint = "unset RAY_ADDRESS" if origin == "RAY_ADDRESS" else "drop --address"
    return ConfigError(
        f"cannot join the Ray cluster at {target!r} (from {origin}): {problem}; check that the "
        f"cluster is up and that this is its GCS address (host:port, port 6379 by default), or "
        f"{hint} to run on a private local Ray instance"
    )


def _session_dir() -> str | None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_session_dir_path() if node is not None else None


def _start_watchdog(session_dir: str, node_id: str | None) -> tuple[subprocess.Popen, int]:
    """Start the watchdog; returns it and the write end of its stdin pipe, which only this
    process holds (os.pipe fds are not inheritable), so it reads EOF when this process ends."""
    read, write = os.pipe()
    try:
        proc = subprocess.Popen(
            # -I: no cwd, script folder or PYTHON* variables on its path, so nothing shadows the
            # stdlib modules it imports.
            [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), session_dir]
            + ([node_id] if node_id else []),
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives Ctrl-C and kills aimed at the driver's group
            close_fds=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return proc, write


# ------------------------------------------------------------------------------------------------
# The watchdog (runs as `python -I cluster.py DRIVER_PID SESSION_DIR [NODE_ID]`; stdlib only)
def _watch(driver: int, session_dir: str, node_id: str | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 4096):
            break  # EOF: the driver closed the pipe or died
        if os.getppid() != driver:
            break  # re-parented: the driver is gone (a forked child may still hold the pipe)
    killed = sweep(session_dir, node_id, spare={os.getpid(), driver})
    if killed:
        log = os.path.join(session_dir, "logs", "batch_inpaint_watchdog.log")
        with contextlib.suppress(OSError), open(log, "a") as f:
            f.write(f"driver {driver} ended; stopped pids {sorted(killed)} of this session\n")


def sweep(session_dir: str, node_id: str | None, spare=frozenset(), timeout: float = 10.0):
    """Stop the processes of one Ray session (SIGTERM, then SIGKILL after 2 s); returns the pids
    signalled. A process belongs to the session when a flag of its command line names the session
    directory or node id (GCS, raylet, monitors), or it holds a file of the session open for
    writing (its logs: agents and workers rename their command line)."""
    signalled: set[int] = set()
    deadline = time.monotonic() + timeout
    sig, term_at = signal.SIGTERM, None
    while time.monotonic() < deadline:
        pids = session_pids(session_dir, node_id, spare)
        if not pids:
            break
        if term_at is not None and time.monotonic() - term_at > 2.0:
            sig = signal.SIGKILL
        for pid in pids:
            if pid not in signalled or sig == signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                signalled.add(pid)
        term_at = term_at or time.monotonic()
        time.sleep(0.2)
    return signalled


def session_pids(session_dir: str, node_id: str | None, spare=frozenset()) -> set[int]:
    """Live processes of this user that belong to the Ray session (see sweep)."""
    flag = re.compile(r"--[\w-]+=" + re.escape(session_dir.rstrip(os.sep)) + r"(?:/|\s|$)")
    node = re.compile(r"--node[-_]id=" + re.escape(node_id) + r"\b") if node_id else None
    real_dir = os.path.realpath(session_dir) + os.sep
    uid = os.getuid()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        pid = int(entry.name)
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            if not cmdline:
                continue  # a zombie or kernel thread
            if (
                flag.search(cmdline)
                or (node and node.search(cmdline))
                or _writes_under(pid, real_dir)
            ):
                found.add(pid)
        except OSError:
            continue  # gone, or not readable
    return found


def _writes_under(pid: int, real_dir: str) -> bool:
    """Whether the process holds a file under real_dir open for writing (Ray's processes write
    their logs there; a reader such as `tail -f` only reads)."""
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if not os.readlink(f"{fd_dir}/{fd}").startswith(real_dir):
                continue
            if os.lstat(f"{fd_dir}/{fd}").st_mode & 0o200:  # the link's mode is the open mode
                return True
        except OSError:
            continue
    return False


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
