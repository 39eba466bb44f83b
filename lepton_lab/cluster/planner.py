"""Plan where jobs run: each job on one site, within capacity, cheapest first, data kept home.

A small mixed-integer program (``scipy.optimize.milp``): binary ``x[j, s]`` puts job
``j`` on site ``s``. Constraints: every job placed exactly once; per site, the
threads, memory and GPUs of its jobs fit what its workers have; a job pinned to its
data's site (``data_site`` with ``data_moves=False``) may go nowhere else. The
objective is the cost of the worker-hours each job uses plus a penalty per GB of
data moved off its site. The plan is advice: nothing is submitted here.

A plan has a time budget (``time_limit``, for the whole plan). A large fleet is
solved through its LP relaxation and small repair MILPs (see :func:`_assign`);
when the budget runs out first, the best plan found so far, or the greedy one
when it is cheaper or nothing was found, is returned and ``status`` says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .allocation import Snapshot

__all__ = ["Job", "Plan", "SiteCapacity", "capacities", "greedy", "plan"]

#: Above this many job × site pairs the MILP goes through its LP relaxation first.
LARGE = 4000


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
         time_limit: float = 1.0, bias: np.ndarray | None = None, gap: float = 0.01) -> Plan:
    """The cheapest placement of ``jobs`` on ``sites``; ConfigError naming a job that fits nowhere.

    ``bias`` (jobs × sites) is added to the objective only, to break ties between equal costs.
    Large fleets may stop ``gap`` (a fraction) above the optimum's lower bound; ``status`` says so.
    ``time_limit`` (seconds) bounds the whole plan: past it, the best plan found (or the greedy one)
    is returned, with ``status`` naming the time limit and ``details["fallback"]`` what was used.
    """
    started = time.monotonic()
    if not jobs:
        return Plan({}, 0.0, 0.0, "optimal")
    if not sites:
        raise ConfigError("no site to place jobs on")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ConfigError("job names must be unique")
    J, S = len(jobs), len(sites)
    site_index = {s.name: i for i, s in enumerate(sites)}
    need = np.array([[j.threads, j.memory, j.gpus] for j in jobs], float)
    caps = np.array([[s.threads, s.memory, s.gpus] for s in sites], float)
    allowed: np.ndarray = np.asarray((need[:, None, :] <= caps[None, :, :]).all(2))
    for j, job in enumerate(jobs):
        if job.data_site is not None and not job.data_moves:
            if job.data_site not in site_index:
                raise ConfigError(f"job {job.name}: its data stays on {job.data_site}, which is not a site here")
            keep = site_index[job.data_site]
            pinned = allowed[j, keep]
            allowed[j, :] = False
            allowed[j, keep] = pinned
    for unplaceable in np.flatnonzero(~allowed.any(1)):
        job = jobs[int(unplaceable)]
        where = (f"on its data's site {job.data_site} (its data may not move)"
                 if job.data_site and not job.data_moves else "on any site")
        raise ConfigError(f"job {job.name} ({job.threads} threads, {job.gpus} GPUs) does not fit {where}")

    threads = need[:, 0]
    hours = np.array([j.hours for j in jobs], float)
    per_hour = np.array([s.cost_per_thread_hour for s in sites], float)
    cost = np.outer(threads * hours, per_hour)
    gb = np.array([j.data_gb if j.data_site else 0.0 for j in jobs], float) * move_penalty_per_gb
    cost += gb[:, None]
    home = np.array([site_index.get(j.data_site, -1) if j.data_site else -1 for j in jobs])
    at_home = np.flatnonzero((home >= 0) & (gb != 0))
    cost[at_home, home[at_home]] -= gb[at_home]
    c = cost + (bias.reshape(J, S) if bias is not None else 0.0)

    x, status = _assign(c, allowed, need, caps, started + time_limit, gap)
    details: dict[str, Any] = {}
    if x is None or status.startswith("time limit"):
        try:
            g = greedy(jobs, sites, move_penalty_per_gb=move_penalty_per_gb)
        except ConfigError:
            g = None
        if g is not None:
            gx = np.array([site_index[g.placement[j.name]] for j in jobs])
            if x is None or c[np.arange(J), gx].sum() < c[np.arange(J), x].sum():
                x, details["fallback"] = gx, "greedy"
                status = f"time limit {time_limit:g} s: the greedy plan"
        if x is None:
            raise ConfigError(f"no placement found within the time limit of {time_limit:g} s; "
                              f"raise time_limit or plan fewer jobs")
        details.setdefault("fallback", "best found")
    placement = {jobs[j].name: sites[int(x[j])].name for j in range(J)}
    moved = sum(job.data_gb for job in jobs if job.data_site and placement[job.name] != job.data_site)
    total = float(cost[np.arange(J), x].sum())
    details.update(objective=float(c[np.arange(J), x].sum()), seconds=round(time.monotonic() - started, 4))
    return Plan(placement, round(total, 6), moved, status, details)


def _assign(c: np.ndarray, allowed: np.ndarray, need: np.ndarray, caps: np.ndarray, deadline: float,
            gap: float) -> tuple[np.ndarray | None, str]:
    """Each job's site index, minimising ``c`` within capacity, and how close to optimal that is.

    Small problems go straight to the MILP. Large ones solve the LP relaxation first: on
    fleets like ours it is nearly integral (a few dozen of 500 jobs split), so the jobs
    it places whole are kept and a small MILP re-places the split ones on the capacity
    left; then, with room made, the split ones and the smallest job (then the two smallest)
    of every site they were split over. The LP's cost bounds the optimum from below: a placement within
    ``gap`` of it is returned with that gap; else the full MILP decides, in the time left.
    A repair MILP only gets the columns of sites that still have room for the job (most
    of a large fleet is full after the LP), and stops at a gap worth ``gap / 2`` of the
    whole plan. ``(None, "time limit")`` or the best placement with a ``time limit`` status
    when ``deadline`` passes first.
    """
    J, S = c.shape

    def left() -> float:
        return deadline - time.monotonic()

    if J * S <= LARGE:
        full = _milp(c, allowed, need, caps, integral=True, time_limit=max(left(), 0.05))
        if full.x is None:
            if full.status == 1:
                return None, "time limit"
            raise ConfigError(f"the jobs do not fit together on these sites ({full.message})")
        return np.round(full.x).reshape(J, S).argmax(1), "optimal" if full.status == 0 else str(full.message)
    lp = _milp(c, allowed, need, caps, integral=False, time_limit=max(left(), 0.05))
    if lp.x is None:
        if lp.status == 1:
            return None, "time limit"
        raise ConfigError(f"the jobs do not fit together on these sites ({lp.message})")
    x = lp.x.reshape(J, S)
    site = x.argmax(1)
    whole = x[np.arange(J), site] > 1 - 1e-6
    bound = float(lp.fun)
    touched = np.flatnonzero((x[~whole] > 1e-6).any(0))
    best: tuple[float, np.ndarray] | None = None
    for extra in (0, 1, 2):
        if left() <= 0:
            break
        keep = whole.copy()
        for s in touched if extra else ():
            on = np.flatnonzero(whole & (site == s))
            keep[on[np.argsort(need[on, 0], kind="stable")][:extra]] = False
        tried = _repair(c, allowed, need, caps, x, site, keep, bound, gap, left())
        if tried is None:
            continue
        off = (c[np.arange(J), tried].sum() - bound) / max(abs(bound), 1e-9)
        if best is None or off < best[0]:
            best = (off, tried)
        if off <= 1e-7:
            return tried, "optimal"
        if off <= gap:
            return tried, f"within {off:.2%} of optimal"
    if left() > 0:
        full = _milp(c, allowed, need, caps, integral=True, time_limit=left(), mip_rel_gap=gap)
        if full.x is not None:
            whole_plan = np.round(full.x).reshape(J, S).argmax(1)
            if full.status == 0:
                return whole_plan, "optimal"
            off = (c[np.arange(J), whole_plan].sum() - bound) / max(abs(bound), 1e-9)
            if best is None or off < best[0]:
                best = (off, whole_plan)
    if best is None:
        return None, "time limit"
    return best[1], f"time limit: within {best[0]:.2%} of optimal"


def _repair(c: np.ndarray, allowed: np.ndarray, need: np.ndarray, caps: np.ndarray, x: np.ndarray,
            site: np.ndarray, keep: np.ndarray, bound: float, gap: float, seconds: float) -> np.ndarray | None:
    """``site`` with the jobs not kept re-placed by a MILP on the capacity the kept ones leave, or None."""
    placed = np.zeros_like(caps)
    np.add.at(placed, site[keep], need[keep])
    room = np.maximum(caps - placed, 0)
    redo = np.flatnonzero(~keep)
    if not len(redo):
        return site
    fits = allowed[redo] & (need[redo][:, None, :] <= room[None, :, :] + 1e-9).all(2)
    if not fits.any(1).all():
        return None
    cols = np.flatnonzero(fits.any(0))
    estimate = float((c[redo] * x[redo]).sum())
    sub_gap = min(0.5, 0.5 * gap * abs(bound) / max(estimate, 1e-9))
    sub = _milp(c[redo][:, cols], fits[:, cols], need[redo], room[cols], integral=True,
                time_limit=max(seconds, 0.05), mip_rel_gap=sub_gap)
    if sub.x is None:
        return None
    out = site.copy()
    out[redo] = cols[np.round(sub.x).reshape(len(redo), len(cols)).argmax(1)]
    return out


def _milp(c: np.ndarray, allowed: np.ndarray, need: np.ndarray, caps: np.ndarray, *, integral: bool,
          time_limit: float, mip_rel_gap: float | None = None):
    """``scipy.optimize.milp`` on binary ``x[j, s]``: each job once, per site and resource within capacity."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, vstack

    J, S = c.shape
    cols = np.arange(J * S)
    blocks = [coo_matrix((np.ones(J * S), (cols // S, cols)), shape=(J, J * S))]
    lo, hi = [np.ones(J)], [np.ones(J)]
    for r in range(need.shape[1]):
        if not need[:, r].any():
            continue
        # Memory in bytes next to thread counts makes a badly scaled matrix: rows are scaled to their largest need.
        scale = need[:, r].max()
        blocks.append(coo_matrix((np.repeat(need[:, r] / scale, S), (cols % S, cols)), shape=(S, J * S)))
        lo.append(np.full(S, -np.inf))
        hi.append(caps[:, r] / scale)
    options: dict[str, Any] = {"time_limit": time_limit}
    if mip_rel_gap is not None and integral:
        options["mip_rel_gap"] = mip_rel_gap
    return milp(c.ravel(), constraints=LinearConstraint(vstack(blocks).tocsr(), np.concatenate(lo), np.concatenate(hi)),
                integrality=np.full(J * S, 1 if integral else 0),
                bounds=Bounds(np.zeros(J * S), allowed.ravel().astype(float)), options=options)


def greedy(jobs: list[Job], sites: list[SiteCapacity], *, move_penalty_per_gb: float = 1.0) -> Plan:
    """A baseline: biggest jobs first, each on the cheapest site that still has room for it."""
    left = {s.name: [s.threads, s.memory, s.gpus] for s in sites}
    placement: dict[str, str] = {}
    total = moved = 0.0
    for job in sorted(jobs, key=lambda j: (-j.gpus, -j.threads, -j.memory)):
        best: tuple[float, str] | None = None
        for s in sites:
            room = left[s.name]
            if job.threads > room[0] or job.memory > room[1] or job.gpus > room[2]:
                continue
            if job.data_site and not job.data_moves and s.name != job.data_site:
                continue
            gb = job.data_gb if job.data_site and job.data_site != s.name else 0.0
            cost = job.threads * job.hours * s.cost_per_thread_hour + move_penalty_per_gb * gb
            if best is None or cost < best[0]:
                best = (cost, s.name)
        if best is None:
            raise ConfigError(f"greedy: job {job.name} fits on no site that is left")
        room = left[best[1]]
        room[0] -= job.threads
        room[1] -= job.memory
        room[2] -= job.gpus
        placement[job.name] = best[1]
        total += best[0]
        moved += job.data_gb if job.data_site and job.data_site != best[1] else 0.0
    return Plan(placement, round(total, 6), moved, "greedy")
