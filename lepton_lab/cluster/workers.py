"""How a Lepton worker is made: its name, its site resources, its nanny, its GPU spec.

Shared by the launcher (workers on this machine) and ``lepton-lab worker``
(a machine joining a scheduler from elsewhere), so that a worker means the same
thing wherever it runs:

* its **name** is ``<site>-<n>`` (``edge-hospital-a-0``);
* its **resources** hold the site kind and the site name, each as many units as
  it has threads, so ``resources={"edge": 1}`` places one task per thread on
  any edge worker, and ``{"edge-hospital-a": 1}`` on that site only; a GPU
  worker also holds ``{"GPU": 1}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from distributed import Nanny, WorkerPlugin

from ..errors import NoGPUError
from .gpus import GPU, dask_cuda_available
from .profiles import SiteSpec

WORKER_NAME = re.compile(r"^(?P<site>[a-z][a-z0-9-]*?)-(?P<n>\d+)$")


def workers_now(client) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler has now, by address, asked of the scheduler itself.

    Not ``Client.scheduler_info()``: it answers from the client's cache, which the
    client's periodic refresh (without per-worker information) may overwrite between
    the fetch and the read.
    """
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


def site_workers(client, site: str) -> dict[str, str]:
    """Address -> name of the workers holding ``site``'s resource, in address order."""
    return {addr: str(w.get("name", addr)) for addr, w in sorted(workers_now(client).items())
            if float((w.get("resources") or {}).get(site, 0)) > 0}


def worker_name(site: str, n: int) -> str:
    return f"{site}-{n}"


def site_of(name: str, resources: dict[str, float] | None = None) -> tuple[str, str]:
    """(site name, site kind) of a worker, from its name and resources.

    A worker Lepton did not start (say, a plain ``dask worker``) is
    ``("unknown", "unknown")`` unless its resources name a kind.
    """
    resources = resources or {}
    kind = "cloud" if "cloud" in resources else "edge" if "edge" in resources else "unknown"
    site = _named_site(str(name))
    if site is not None and (site in resources or site == kind):
        return site, kind
    return kind, kind


@functools.lru_cache(maxsize=4096)
def _named_site(name: str) -> str | None:
    """The site a worker's name gives (``edge-hospital-a-0`` -> ``edge-hospital-a``); a
    snapshot asks this of every worker every second, and names do not change."""
    m = WORKER_NAME.match(name)
    return m["site"] if m else None


def site_resources(kind: str, site: str, threads: int, gpu: bool = False) -> dict[str, float]:
    """The Dask ``resources`` of one worker of ``site``."""
    res: dict[str, float] = {kind: threads, site: threads}
    if gpu:
        res["GPU"] = 1
    return res


def on_site(site: str, gpus: int = 0) -> dict[str, float]:
    """Resources that place one task on a worker of ``site`` (a site name or ``cloud``/``edge``).

    >>> client.submit(f, x, resources=lepton_lab.on_site("edge-hospital-a"))
    """
    res: dict[str, float] = {site: 1}
    if gpus:
        res["GPU"] = gpus
    return res


# -- keeping the kernel's environment ----------------------------------------------------------
#
# A nanny sets OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ... in *this* process's
# os.environ before it spawns a worker, and never puts them back: numpy, torch and
# XGBoost in the kernel would then run on one thread. Workers still get those
# settings, because they inherit the environment at spawn time; only the window
# around the spawn sees them. Spawns may overlap (several nannies start at once,
# and the main thread may guard a whole bring-up), so the first to enter saves
# and the last to leave restores.

_env_lock = threading.Lock()
_env_depth = 0
_env_saved: dict[str, str] = {}


def _enter_env() -> None:
    global _env_depth, _env_saved
    with _env_lock:
        if _env_depth == 0:
            _env_saved = dict(os.environ)
        _env_depth += 1


def _leave_env() -> None:
    global _env_depth
    with _env_lock:
        _env_depth -= 1
        if _env_depth:
            return
        for key in [k for k in os.environ if k not in _env_saved]:
            del os.environ[key]
        for key, value in _env_saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def kernel_environment() -> Iterator[None]:
    """Leave ``os.environ`` as it was found, whatever worker spawns happen inside."""
    _enter_env()
    try:
        yield
    finally:
        _leave_env()


class IgnoreInterrupt(WorkerPlugin):
    """Makes a worker process deaf to SIGINT; its nanny alone stops or restarts it.

    Worker processes share the process group of the process that started them, and
    Jupyter's Interrupt signals a kernel's whole group: without this, interrupting a
    cell would kill every worker of a cluster the kernel started.
    """

    name = "lepton-ignore-interrupt"
    idempotent = True

    def setup(self, worker=None) -> None:
        import signal

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class SiteNanny(Nanny):
    """A :class:`distributed.Nanny` that gives the parent process its environment back.

    Restarts after a worker dies go through ``instantiate`` too, so they are covered.
    Its worker ignores SIGINT (:class:`IgnoreInterrupt`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["plugins"] = (*kwargs.get("plugins", ()), IgnoreInterrupt())
        super().__init__(*args, **kwargs)

    async def instantiate(self):  # type: ignore[override]
        _enter_env()
        try:
            return await super().instantiate()
        finally:
            _leave_env()


# -- planning workers of a site ----------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """One worker to start: where, its shape, and the GPU it owns (if any).

    ``peers`` are the ``CUDA_VISIBLE_DEVICES`` entries of every GPU its site
    holds, so the worker sees its own GPU first and its site's others after it
    (dask-cuda's rotation), never a GPU its site does not hold.
    """

    name: str
    site: str
    kind: str
    threads: int
    memory: int
    gpu: GPU | None = None
    peers: tuple[str, ...] = ()

    @property
    def resources(self) -> dict[str, float]:
        return site_resources(self.kind, self.site, self.threads, self.gpu is not None)

    @property
    def cuda_visible_devices(self) -> str | None:
        """The worker's ``CUDA_VISIBLE_DEVICES``: its GPU first, then its site's others (whole GPUs only).

        A MIG instance is shown alone: CUDA gives a process one MIG instance.
        """
        if self.gpu is None:
            return None
        own = self.gpu.visible_as
        if self.gpu.mig or own not in self.peers:
            return own
        i = self.peers.index(own)
        rotated = self.peers[i:] + self.peers[:i]
        return ",".join(d for d in rotated if not d.upper().startswith("MIG-"))


def gpu_count_for(site: SiteSpec, gpus: list[GPU]) -> int:
    """How many GPU workers ``site`` gets on a machine with ``gpus``; a clear error if impossible."""
    want = site.gpus
    if isinstance(want, str):  # "auto", the one string profiles accept
        return len(gpus)
    if want and not gpus:
        raise NoGPUError(
            f"no GPU found on this machine (site {site.name} asks for {want}); drop --gpus, "
            "or join a GPU machine with `lepton-lab worker --scheduler ADDRESS --gpus N`"
        )
    if want > len(gpus):
        raise NoGPUError(
            f"site {site.name} asks for {want} GPUs but this machine has {len(gpus)}; use --gpus {len(gpus)}"
        )
    return int(want)


def plan_site(site: SiteSpec, gpus: list[GPU], start: int = 0) -> list[WorkerPlan]:
    """Workers for ``site``: one per GPU it gets, then CPU workers up to ``site.workers``.

    ``gpus`` are the devices this site may use (all of them for ``gpus: auto``,
    the first ``site.gpus`` otherwise).
    """
    n_gpu = gpu_count_for(site, gpus)
    n_cpu = max(site.workers - n_gpu, 0)
    mine = gpus[:n_gpu]
    peers = tuple(g.visible_as for g in mine)
    plans = []
    for i, gpu in enumerate(mine):
        plans.append(WorkerPlan(worker_name(site.name, start + i), site.name, site.kind,
                                site.threads, site.memory, gpu, peers))
    for j in range(n_cpu):
        plans.append(WorkerPlan(worker_name(site.name, start + n_gpu + j), site.name, site.kind,
                                site.threads, site.memory))
    return plans


class CPUAffinity(WorkerPlugin):
    """Pins a GPU worker's process to the CPU cores nearest its GPU (dask-cuda's habit).

    Cores this process may not use (a container's cpuset) are dropped; with none
    left the worker keeps the affinity it inherited.
    """

    idempotent = True

    def __init__(self, cores: tuple[int, ...]):
        self.cores = tuple(cores)

    def setup(self, worker=None) -> None:
        try:
            cores = set(self.cores) & os.sched_getaffinity(0)
            if cores:
                os.sched_setaffinity(0, cores)
        except (AttributeError, OSError):  # no affinity API on this platform
            pass


def gpu_options(plan: WorkerPlan) -> dict[str, Any]:
    """The options that make ``plan``'s nanny a GPU worker (dask-cuda's ``worker_spec`` recipe).

    Computed from NVML facts gathered at discovery; nothing here touches CUDA,
    NVML or imports dask-cuda, so the process that plans workers (a Jupyter server)
    never creates a CUDA context. The CUDA context is made in the worker process,
    by dask-cuda's own ``dask_cuda.initialize`` preload when dask-cuda is installed.
    """
    assert plan.gpu is not None
    options: dict[str, Any] = {
        "env": {"CUDA_VISIBLE_DEVICES": plan.cuda_visible_devices},
        "data": dict,
    }
    if plan.gpu.cpus:
        options["plugins"] = [CPUAffinity(plan.gpu.cpus)]
    if dask_cuda_available():
        options["preload"] = [("dask_cuda.initialize", ["--create-cuda-context"])]
    return options


def _with_preload(options: dict[str, Any], preloads: list[tuple[str, list[str]]]) -> None:
    """Add preloads to ``options``, each with its own argv (distributed's list-of-lists form)."""
    names = options.get("preload") or []
    names = [names] if isinstance(names, str) else list(names)
    argv = options.get("preload_argv") or []
    if argv and isinstance(argv[0], str):
        argv = [list(argv)] * len(names)
    argv = list(argv) or [[] for _ in names]
    for name, args in preloads:
        names.append(name)
        argv.append(list(args))
    options["preload"], options["preload_argv"] = names, argv


def worker_spec(plan: WorkerPlan, base_options: dict[str, Any]) -> dict[str, Any]:
    """A ``SpecCluster`` worker spec for ``plan``.

    A GPU worker sees its own GPU first (``CUDA_VISIBLE_DEVICES``), is pinned
    to the CPUs nearest it and creates its CUDA context itself; see :func:`gpu_options`.
    """
    options = dict(base_options)
    options.update(
        name=plan.name,
        nthreads=plan.threads,
        memory_limit=plan.memory,
        resources=plan.resources,
    )
    if plan.gpu is not None:
        for key, value in gpu_options(plan).items():
            if key == "env":
                options[key] = {**(options.get(key) or {}), **value}
            elif key == "plugins":
                options[key] = [*(options.get(key) or []), *value]
            elif key == "preload":
                _with_preload(options, value)
            else:
                options[key] = value
    return {"cls": SiteNanny, "options": options}


async def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())
