"""Plan where jobs run: each job on one site, within capacity, cheapest first, data kept home.

A small mixed-integer program (``scipy.optimize.milp``): binary ``x[j, s]`` puts job
``j`` on site ``s``. Constraints: every job placed exactly once; per site, the
threads, memory and GPUs of its jobs fit what its workers have; a job pinned to its
data's site (``data_site`` with ``data_moves=False``) may go nowhere else. The
objective is the cost of the worker-hours each job uses plus a penalty per GB of
data moved off its site. The plan is advice: nothing is submitted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .allocation import Snapshot


@dataclass(frozen=True)
class Job:
    """What a job needs: threads, memory (bytes), GPUs, hours, and where its data lives."""

    name: str
    threads: int = 1
    memory: int = 0
    gpus: int = 0
    hours: float = 1.0
    data_site: str | None = None
    data_gb: float = 0.0
    data_moves: bool = True


@dataclass(frozen=True)
class SiteCapacity:
    """Free capacity of a site and its cost per worker-hour."""

    name: str
    kind: str
    threads: int
    memory: int
    gpus: int
    cost_per_thread_hour: float


@dataclass
class Plan:
    """Where each job goes, what it costs, and why a job could not be placed."""

    placement: dict[str, str]
    cost: float
    moved_gb: float
    status: str
    details: dict[str, Any] = field(default_factory=dict)

    def resources(self, job: str) -> dict[str, float]:
        """The Dask ``resources=`` that send ``job`` to its planned site."""
        return {self.placement[job]: 1}


def capacities(snapshot: Snapshot) -> list[SiteCapacity]:
    """Free threads, memory and GPUs per site, from an allocation snapshot."""
    out = []
    for s in snapshot.sites:
        workers = [w for w in snapshot.workers if w.site == s.name]
        busy = sum(w.processing for w in workers)
        cost = s.cost_per_hour / s.nthreads if s.nthreads else 0.0
        used_gpus = sum(w.used_resources.get("GPU", 0) for w in workers)
        out.append(SiteCapacity(s.name, s.kind, max(s.nthreads - busy, 0), max(s.memory_limit - s.memory_used, 0),
                                int(max(s.gpus - used_gpus, 0)), cost))
    return out


def plan(jobs: list[Job], sites: list[SiteCapacity], *, move_penalty_per_gb: float = 1.0,
         time_limit: float = 5.0) -> Plan:
    """The cheapest placement of ``jobs`` on ``sites``; ConfigError naming a job that fits nowhere."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    if not jobs:
        return Plan({}, 0.0, 0.0, "optimal")
    if not sites:
        raise ConfigError("no site to place jobs on")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ConfigError("job names must be unique")
    J, S = len(jobs), len(sites)
    site_index = {s.name: i for i, s in enumerate(sites)}
    allowed = np.ones((J, S))
    for j, job in enumerate(jobs):
        for s, site in enumerate(sites):
            if job.threads > site.threads or job.memory > site.memory or job.gpus > site.gpus:
                allowed[j, s] = 0
        if job.data_site is not None and not job.data_moves:
            if job.data_site not in site_index:
                raise ConfigError(f"job {job.name}: its data stays on {job.data_site}, which is not a site here")
            keep = site_index[job.data_site]
            allowed[j, :] = 0 if allowed[j, keep] == 0 else np.eye(S)[keep]
        if not allowed[j].any():
            where = (f"on its data's site {job.data_site} (its data may not move)"
                     if job.data_site and not job.data_moves else "on any site")
            raise ConfigError(f"job {job.name} ({job.threads} threads, {job.gpus} GPUs) does not fit {where}")

    cost = np.zeros((J, S))
    for j, job in enumerate(jobs):
        for s, site in enumerate(sites):
            moved = job.data_gb if job.data_site and job.data_site != site.name else 0.0
            cost[j, s] = job.threads * job.hours * site.cost_per_thread_hour + move_penalty_per_gb * moved
    c = cost.ravel()

    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []
    for j in range(J):  # each job exactly once
        row = np.zeros(J * S)
        row[j * S:(j + 1) * S] = 1
        rows.append(row)
        lo.append(1)
        hi.append(1)
    for s, site in enumerate(sites):  # capacity per site
        for attr, cap in (("threads", site.threads), ("memory", site.memory), ("gpus", site.gpus)):
            row = np.zeros(J * S)
            for j, job in enumerate(jobs):
                row[j * S + s] = getattr(job, attr)
            if row.any():
                rows.append(row)
                lo.append(-np.inf)
                hi.append(cap)
    upper = allowed.ravel()
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(J * S),
               bounds=Bounds(np.zeros(J * S), upper), options={"time_limit": time_limit})
    if res.x is None:
        raise ConfigError(f"the jobs do not fit together on these sites ({res.message})")
    x = np.round(res.x).reshape(J, S)
    placement = {jobs[j].name: sites[int(x[j].argmax())].name for j in range(J)}
    moved = sum(job.data_gb for job in jobs if job.data_site and placement[job.name] != job.data_site)
    return Plan(placement, round(float(c @ res.x), 6), moved, "optimal" if res.status == 0 else res.message,
                {"objective": float(res.fun)})
