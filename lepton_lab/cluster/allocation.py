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
            workers=[WorkerAllocation(**{**w, "gpus": [GPUUsage(**g) for g in w["gpus"]]})
                     for w in d["workers"]],
            sites=[SiteTotals(**s) for s in d["sites"]],
            jobs=[JobAllocation(**j) for j in d["jobs"]],
            totals=Totals(**d["totals"]),
        )

    def site(self, name: str) -> SiteTotals | None:
        return next((s for s in self.sites if s.name == name or s.kind == name), None)

    def job(self, name: str) -> JobAllocation | None:
        return next((j for j in self.jobs if j.name == name), None)


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


def _gpu_usage(ws: Any) -> list[dict[str, Any]]:
    """A worker's GPUs as ``GPUUsage`` fields."""
    live = (ws.metrics or {}).get("gpu") or {}
    static = (getattr(ws, "extra", None) or {}).get("gpu") or {}
    if not live and not static:
        return []
    return [{"index": 0, "name": str(static.get("name", "GPU")), "utilization": live.get("utilization"),
             "memory_used": live.get("memory-used"), "memory_total": static.get("memory-total")}]


def collect(dask_scheduler: Any, cluster: str = "", costs: dict[str, float] | None = None) -> dict[str, Any]:
    """Build the snapshot from a live ``Scheduler`` object (runs on the scheduler).

    One pass over workers and their tasks; workers go straight to their JSON form
    (the fields of ``WorkerAllocation``), since there are many of them.
    """
    costs = costs or {}
    now = time.time()
    workers: list[dict[str, Any]] = []
    sites: dict[str, SiteTotals] = {}
    jobs: dict[str, JobAllocation] = {}
    # Each job's sites, as a set beside its list: one pass costs workers + tasks.
    job_sites: dict[str, set[str]] = {}
    totals = Totals()
    for ws in list(dask_scheduler.workers.values()):
        resources = dict(ws.resources or {})
        site, kind = site_of(ws.name, resources)
        per_job: dict[str, int] = {}
        for ts in list(ws.processing):
            job_name = job_of(ts)
            per_job[job_name] = per_job.get(job_name, 0) + 1
            job = jobs.get(job_name)
            if job is None:
                job = jobs[job_name] = JobAllocation(job_name)
                job_sites[job_name] = set()
            job.tasks += 1
            job_resources = job.resources
            job_resources["threads"] = job_resources.get("threads", 0) + 1
            for res, amount in (ts.resource_restrictions or {}).items():
                job_resources[res] = job_resources.get(res, 0) + amount
        # A worker is visited once, so it joins each of its jobs once.
        for job_name in per_job:
            jobs[job_name].workers.append(str(ws.name))
            if site not in job_sites[job_name]:
                job_sites[job_name].add(site)
                jobs[job_name].sites.append(site)
        metrics = ws.metrics or {}
        gpus = _gpu_usage(ws)
        mem_used = int(metrics.get("memory", 0) or 0)
        cost = float(costs.get(site, 0.0))
        nthreads, memory_limit, processing = ws.nthreads, int(ws.memory_limit or 0), len(ws.processing)
        workers.append({
            "name": str(ws.name), "address": ws.address, "site": site, "kind": kind, "nthreads": nthreads,
            "memory_used": mem_used, "memory_limit": memory_limit,
            "cpu": float(metrics.get("cpu", 0.0) or 0.0), "gpus": gpus, "processing": processing,
            "resources": resources, "used_resources": dict(ws.used_resources or {}), "jobs": per_job,
            "cost_per_hour": cost,
        })
        n_gpus = max(len(gpus), int(resources.get("GPU", 0)))
        s = sites.get(site)
        if s is None:
            s = sites[site] = SiteTotals(site, kind)
        for agg in (s, totals):
            agg.workers += 1
            agg.nthreads += nthreads
            agg.memory_used += mem_used
            agg.memory_limit += memory_limit
            agg.gpus += n_gpus
            agg.processing += processing
            agg.cost_per_hour = round(agg.cost_per_hour + cost, 4)
    for job_name, p in progress(dask_scheduler, now).items():
        job = jobs.get(job_name)
        if job is None:
            job = jobs[job_name] = JobAllocation(job_name)
        job.done, job.total, job.erred = p.done, p.total, p.erred
        job.started, job.finished, job.elapsed = p.started, p.finished, p.elapsed
    workers.sort(key=lambda w: (w["kind"] != "cloud", w["site"], _natural(w["name"])))
    return {
        "cluster": cluster, "time": now, "scheduler": dask_scheduler.address, "workers": workers,
        "sites": _plain(sorted(sites.values(), key=lambda s: (s.kind != "cloud", s.name))),
        "jobs": _plain(sorted(jobs.values(), key=_job_order)), "totals": _plain(totals),
    }


def _job_order(job: JobAllocation) -> tuple:
    """Running jobs first, the busiest first; then the jobs that finished, the latest first."""
    if job.finished is None:
        return (0, -job.tasks, job.name)
    return (1, -job.finished, job.name)


def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def snapshot(client: Any, cluster: str = "", costs: dict[str, float] | None = None) -> Snapshot:
    """Ask the scheduler behind ``client`` for one snapshot (a single round trip)."""
    data = client.run_on_scheduler(collect, cluster=cluster, costs=costs)
    return Snapshot.from_dict(data)
