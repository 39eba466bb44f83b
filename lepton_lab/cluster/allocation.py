"""One snapshot of a scheduler: who holds which CPU, memory and GPU, for which job.

A snapshot is taken on the scheduler (``client.run_on_scheduler``), in one pass over
its state, and comes back JSON-ready. It never polls by itself: the live view and
the server's stream call :func:`snapshot` on their own clock.

A **job** is a named group of tasks: the ``job`` annotation when there is one
(``with dask.annotate(job="fraud-train"): ...``), else the task's key prefix
(``train-xgboost-1f3a...`` → ``train-xgboost``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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
    name: str
    tasks: int = 0
    workers: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)


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


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict`` without its deep copies: a snapshot is rebuilt every second."""
    if hasattr(obj, "__dataclass_fields__"):
        return {name: _plain(getattr(obj, name)) for name in obj.__dataclass_fields__}
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _job_of(ts: Any) -> str:
    annotations = getattr(ts, "annotations", None) or {}
    if "job" in annotations:
        return str(annotations["job"])
    return str(ts.prefix.name) if getattr(ts, "prefix", None) is not None else str(ts.key)


def _gpu_usage(ws: Any) -> list[GPUUsage]:
    live = (ws.metrics or {}).get("gpu") or {}
    static = (getattr(ws, "extra", None) or {}).get("gpu") or {}
    if not live and not static:
        return []
    return [GPUUsage(0, str(static.get("name", "GPU")), live.get("utilization"),
                     live.get("memory-used"), static.get("memory-total"))]


def collect(dask_scheduler: Any, cluster: str = "", costs: dict[str, float] | None = None) -> dict[str, Any]:
    """Build the snapshot from a live ``Scheduler`` object (runs on the scheduler)."""
    costs = costs or {}
    workers: list[WorkerAllocation] = []
    sites: dict[str, SiteTotals] = {}
    jobs: dict[str, JobAllocation] = {}
    totals = Totals()
    for ws in list(dask_scheduler.workers.values()):
        resources = dict(ws.resources or {})
        site, kind = site_of(ws.name, resources)
        per_job: dict[str, int] = {}
        for ts in list(ws.processing):
            job_name = _job_of(ts)
            per_job[job_name] = per_job.get(job_name, 0) + 1
            job = jobs.setdefault(job_name, JobAllocation(job_name))
            job.tasks += 1
            if ws.name not in job.workers:
                job.workers.append(str(ws.name))
            if site not in job.sites:
                job.sites.append(site)
            job.resources["threads"] = job.resources.get("threads", 0) + 1
            for res, amount in (ts.resource_restrictions or {}).items():
                job.resources[res] = job.resources.get(res, 0) + amount
        metrics = ws.metrics or {}
        gpus = _gpu_usage(ws)
        mem_used = int(metrics.get("memory", 0) or 0)
        cost = float(costs.get(site, 0.0))
        w = WorkerAllocation(
            name=str(ws.name), address=ws.address, site=site, kind=kind, nthreads=ws.nthreads,
            memory_used=mem_used, memory_limit=int(ws.memory_limit or 0),
            cpu=float(metrics.get("cpu", 0.0) or 0.0), gpus=gpus, processing=len(ws.processing),
            resources=resources, used_resources=dict(ws.used_resources or {}), jobs=per_job,
            cost_per_hour=cost,
        )
        workers.append(w)
        s = sites.setdefault(site, SiteTotals(site, kind))
        for agg in (s, totals):
            agg.workers += 1
            agg.nthreads += w.nthreads
            agg.memory_used += w.memory_used
            agg.memory_limit += w.memory_limit
            agg.gpus += max(len(gpus), int(resources.get("GPU", 0)))
            agg.processing += w.processing
            agg.cost_per_hour = round(agg.cost_per_hour + cost, 4)
    workers.sort(key=lambda w: (w.kind != "cloud", w.site, _natural(w.name)))
    return Snapshot(
        cluster=cluster, time=time.time(), scheduler=dask_scheduler.address, workers=workers,
        sites=sorted(sites.values(), key=lambda s: (s.kind != "cloud", s.name)),
        jobs=sorted(jobs.values(), key=lambda j: (-j.tasks, j.name)), totals=totals,
    ).to_dict()


def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def snapshot(client: Any, cluster: str = "", costs: dict[str, float] | None = None) -> Snapshot:
    """Ask the scheduler behind ``client`` for one snapshot (a single round trip)."""
    data = client.run_on_scheduler(collect, cluster=cluster, costs=costs)
    return Snapshot.from_dict(data)
