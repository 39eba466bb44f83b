"""One snapshot of a scheduler: who holds which CPU, memory and GPU, for which job.

A snapshot is taken on the scheduler (``client.run_on_scheduler``), in one pass over
its state, and comes back JSON-ready. It never polls by itself: the live view and
the server's stream call :func:`snapshot` on their own clock.

A **job** is a named group of tasks: the ``job`` annotation when there is one
(``with dask.annotate(job="fraud-train"): ...``), else the task's key prefix
(``train-xgboost-1f3a...`` → ``train-xgboost``). Beside what its running tasks hold,
each job carries how far it has come (:mod:`.jobs`): done of total tasks, erred, elapsed;
a job that ended stays listed, finished, for a while.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

from .jobs import job_of, progress
from .workers import site_of


@dataclass
class GPUUsage:
    index: int
    name: str
    utilization: float | None
    memory_used: int | None
    memory_total: int | None


@dataclass
class WorkerAllocation:
    name: str
    address: str
    site: str
    kind: str
    nthreads: int
    memory_used: int
    memory_limit: int
    cpu: float
    gpus: list[GPUUsage]
    processing: int
    resources: dict[str, float]
    used_resources: dict[str, float]
    jobs: dict[str, int]
    cost_per_hour: float


@dataclass
class SiteTotals:
    name: str
    kind: str
    workers: int = 0
    nthreads: int = 0
    memory_used: int = 0
    memory_limit: int = 0
    gpus: int = 0
    processing: int = 0
    cost_per_hour: float = 0.0


@dataclass
class JobAllocation:
    """A job: what its running tasks hold now (``tasks``, ``workers``, ``sites``, ``resources``)
    and how far it has come (``done`` of ``total`` tasks, ``erred``; ``started`` and ``finished``
    in seconds since the epoch, ``finished`` set once no task is left to run; ``elapsed`` seconds)."""

    name: str
    tasks: int = 0
    workers: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    done: int = 0
    total: int = 0
    erred: int = 0
    started: float | None = None
    finished: float | None = None
    elapsed: float = 0.0


@dataclass
class Totals:
    workers: int = 0
    nthreads: int = 0
    memory_used: int = 0
    memory_limit: int = 0
    gpus: int = 0
    processing: int = 0
    cost_per_hour: float = 0.0


@dataclass
class Snapshot:
    """What the cluster holds right now; ``to_dict()`` is the JSON the REST API sends."""

    cluster: str
    time: float
    scheduler: str
    workers: list[WorkerAllocation]
    sites: list[SiteTotals]
    jobs: list[JobAllocation]
    totals: Totals

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Snapshot":
        return cls(
            cluster=d["cluster"], time=d["time"], scheduler=d["scheduler"],
            workers=[_worker(w) for w in d["workers"]],
            sites=[SiteTotals(**s) for s in d["sites"]],
            jobs=[JobAllocation(**j) for j in d["jobs"]],
            totals=Totals(**d["totals"]),
        )

    def site(self, name: str) -> SiteTotals | None:
        return next((s for s in self.sites if s.name == name or s.kind == name), None)

    def job(self, name: str) -> JobAllocation | None:
        return next((j for j in self.jobs if j.name == name), None)


def _worker(w: dict[str, Any]) -> WorkerAllocation:
    worker = WorkerAllocation(**w)
    if worker.gpus:
        worker.gpus = [GPUUsage(**g) for g in worker.gpus]  # type: ignore[arg-type]
    return worker


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict`` without its deep copies: a snapshot is rebuilt every second."""
    cls = type(obj)
    if cls in _ATOMS:
        return obj
    if cls is list:
        return [x if type(x) in _ATOMS else _plain(x) for x in obj]
    if cls is dict:
        return {k: v if type(v) in _ATOMS else _plain(v) for k, v in obj.items()}
    if hasattr(cls, "__dataclass_fields__"):
        return {name: _plain(getattr(obj, name)) for name in cls.__dataclass_fields__}
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _gpu_usage(ws: Any, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """A worker's GPUs as ``GPUUsage`` fields."""
    live = metrics.get("gpu")
    extra = getattr(ws, "extra", None)
    static = extra.get("gpu") if extra else None
    if not live and not static:
        return []
    live, static = live or {}, static or {}
    return [{"index": 0, "name": str(static.get("name", "GPU")), "utilization": live.get("utilization"),
             "memory_used": live.get("memory-used"), "memory_total": static.get("memory-total")}]


def collect(dask_scheduler: Any, cluster: str = "", costs: dict[str, float] | None = None) -> dict[str, Any]:
    """Build the snapshot from a live ``Scheduler`` object (runs on the scheduler).

    One pass over workers and their tasks; workers go straight to their JSON form
    (the fields of ``WorkerAllocation``), since there are many of them. A site's
    totals add up in that pass as plain numbers; the cluster's are the sum of its sites'.
    """
    costs = costs or {}
    now = time.time()
    workers: list[dict[str, Any]] = []
    # site -> [kind, workers, nthreads, memory_used, memory_limit, gpus, processing, cost]
    sums: dict[str, list[Any]] = {}
    jobs: dict[str, JobAllocation] = {}
    # Each job's sites, as a set beside its list: one pass costs workers + tasks.
    job_sites: dict[str, set[str]] = {}
    for ws in list(dask_scheduler.workers.values()):
        resources = dict(ws.resources or {})
        name = str(ws.name)
        site, kind = site_of(name, resources)
        per_job: dict[str, int] = {}
        processing_tasks = list(ws.processing)
        # Tasks are counted per job on this worker, then added to their jobs once.
        per_job_resources: dict[str, dict[str, float]] = {}
        for ts in processing_tasks:
            job_name = job_of(ts)
            per_job[job_name] = per_job.get(job_name, 0) + 1
            restrictions = ts.resource_restrictions
            if restrictions:
                held = per_job_resources.get(job_name) or per_job_resources.setdefault(job_name, {})
                for res, amount in restrictions.items():
                    held[res] = held.get(res, 0) + amount
        # A worker is visited once, so it joins each of its jobs once.
        for job_name, count in per_job.items():
            job = jobs.get(job_name)
            if job is None:
                job = jobs[job_name] = JobAllocation(job_name)
                job_sites[job_name] = set()
            job.tasks += count
            job.workers.append(name)
            job_resources = job.resources
            job_resources["threads"] = job_resources.get("threads", 0) + count
            for res, amount in per_job_resources.get(job_name, {}).items():
                job_resources[res] = job_resources.get(res, 0) + amount
            if site not in job_sites[job_name]:
                job_sites[job_name].add(site)
                job.sites.append(site)
        metrics = ws.metrics or {}
        gpus = _gpu_usage(ws, metrics)
        mem_used = int(metrics.get("memory", 0) or 0)
        cost = float(costs.get(site, 0.0))
        nthreads, memory_limit, processing = ws.nthreads, int(ws.memory_limit or 0), len(processing_tasks)
        workers.append({
            "name": name, "address": ws.address, "site": site, "kind": kind, "nthreads": nthreads,
            "memory_used": mem_used, "memory_limit": memory_limit,
            "cpu": float(metrics.get("cpu", 0.0) or 0.0), "gpus": gpus, "processing": processing,
            "resources": resources, "used_resources": dict(ws.used_resources or {}), "jobs": per_job,
            "cost_per_hour": cost,
        })
        n_gpus = len(gpus)
        if "GPU" in resources:
            n_gpus = max(n_gpus, int(resources["GPU"]))
        s = sums.get(site)
        if s is None:
            s = sums[site] = [kind, 0, 0, 0, 0, 0, 0, 0.0]
        s[1] += 1
        s[2] += nthreads
        s[3] += mem_used
        s[4] += memory_limit
        s[5] += n_gpus
        s[6] += processing
        s[7] += cost
    sites = [SiteTotals(site, kind, n, threads, used, limit, g, proc, round(cost, 4))
             for site, (kind, n, threads, used, limit, g, proc, cost) in sums.items()]
    totals = Totals()
    for st in sites:
        totals.workers += st.workers
        totals.nthreads += st.nthreads
        totals.memory_used += st.memory_used
        totals.memory_limit += st.memory_limit
        totals.gpus += st.gpus
        totals.processing += st.processing
        totals.cost_per_hour += st.cost_per_hour
    totals.cost_per_hour = round(totals.cost_per_hour, 4)
    for job_name, p in progress(dask_scheduler, now).items():
        job = jobs.get(job_name)
        if job is None:
            job = jobs[job_name] = JobAllocation(job_name)
        job.done, job.total, job.erred = p.done, p.total, p.erred
        job.started, job.finished, job.elapsed = p.started, p.finished, p.elapsed
    workers.sort(key=_worker_order)
    return {
        "cluster": cluster, "time": now, "scheduler": dask_scheduler.address, "workers": workers,
        "sites": _plain(sorted(sites, key=lambda s: (s.kind != "cloud", s.name))),
        "jobs": _plain(sorted(jobs.values(), key=_job_order)), "totals": _plain(totals),
    }


def _worker_order(w: dict[str, Any]) -> tuple:
    """Cloud workers first, then by site, then by name with its number read as a number."""
    return (w["kind"] != "cloud", w["site"], _natural(w["name"]))


def _job_order(job: JobAllocation) -> tuple:
    """Running jobs first, the busiest first; then the jobs that finished, the latest first."""
    if job.finished is None:
        return (0, -job.tasks, job.name)
    return (1, -job.finished, job.name)


@functools.lru_cache(maxsize=4096)
def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def snapshot(client: Any, cluster: str = "", costs: dict[str, float] | None = None) -> Snapshot:
    """Ask the scheduler behind ``client`` for one snapshot (a single round trip)."""
    data = client.run_on_scheduler(collect, cluster=cluster, costs=costs)
    return Snapshot.from_dict(data)
