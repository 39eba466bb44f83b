"""Where a job goes on a live cluster: the planner (:mod:`lepton_lab.cluster.planner`) over its allocation.

``choose(JobRequest(...), snapshot, profile)`` turns a job of the magics and the API
(train, serve, tune, federate) into planner jobs over the sites' free workers and
GPUs, solves them and says why in one line and its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..reprs import render
from .allocation import Snapshot
from .planner import Job, Plan, SiteCapacity, capacities, greedy, plan

__all__ = ["Choice", "Job", "JobRequest", "Pick", "Plan", "SiteCapacity", "capacities", "choose", "greedy", "plan"]


#: What ``choose`` plans: one site for train and serve, a slot per trial anywhere for tune,
#: one worker on each data site for federate.
KINDS = ("train", "federate", "serve", "tune")
_ONE_SITE = ("train", "serve")


@dataclass(frozen=True)
class JobRequest:
    """What a job asks of a cluster: workers (GPU ones among them), memory per worker, where its data is.

    ``sites`` limits where it may go (site names or kinds); for ``federate`` they are the
    sites whose data it trains on (every edge site when empty). ``data_moves=False`` keeps
    the job on ``data_site``.
    """

    kind: str = "train"
    workers: int = 1
    gpus: int = 0
    memory: int = 0
    hours: float = 1.0
    data_site: str | None = None
    data_gb: float = 0.0
    data_moves: bool = True
    sites: tuple[str, ...] = ()

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"plan: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for label, value, lo in (("workers", self.workers, 1), ("gpus", self.gpus, 0), ("memory", self.memory, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"plan: {label} must be a whole number >= {lo}, got {value!r}")
        if self.gpus > self.workers:
            raise ConfigError(f"plan: gpus ({self.gpus}) counts GPU workers, at most workers ({self.workers})")
        for label, num in (("hours", self.hours), ("data_gb", self.data_gb)):
            if isinstance(num, bool) or not isinstance(num, (int, float)) or not np.isfinite(num) or num < 0:
                raise ConfigError(f"plan: {label} must be a number >= 0, got {num!r}")
        if self.hours <= 0:
            raise ConfigError("plan: hours must be positive")


@dataclass
class Pick:
    """The part of a job one site takes."""

    site: str
    kind: str
    workers: int
    gpus: int
    cost_per_hour: float


@dataclass
class Choice:
    """Where the planner puts a job, what it costs per hour, and why."""

    kind: str
    picks: list[Pick]
    cost_per_hour: float
    data_site: str | None
    data_local: bool | None  # None: the job names no data site
    moved_gb: float
    waits: bool
    why: list[str]
    status: str = "optimal"

    @property
    def site(self) -> str:
        """The site that takes most of the job (the only one for train and serve)."""
        return max(self.picks, key=lambda p: p.workers).site

    @property
    def sites(self) -> list[str]:
        return [p.site for p in self.picks]

    @property
    def workers(self) -> int:
        return sum(p.workers for p in self.picks)

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.picks)

    def line(self) -> str:
        """One line: where, how much, data locality."""
        where = ", ".join(f"{p.site}×{p.workers}" for p in self.picks)
        gpus = f", {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else ""
        data = ""
        if self.data_local is not None:
            data = (f"; data stays on {self.data_site}" if self.data_local
                    else f"; data moves off {self.data_site} ({self.moved_gb:g} GB)")
        wait = "; waits for busy workers" if self.waits else ""
        return f"planner: {self.kind} on {where}{gpus} at ${self.cost_per_hour:.2f}/h{data}{wait}"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "site": self.site, "line": self.line()}

    def __repr__(self) -> str:
        return "\n".join([self.line()] + [f"  because {w}" for w in self.why])

    def _repr_html_(self) -> str:
        return render("placement_choice", line=self.line(), picks=self.picks, why=self.why)


@dataclass
class _Site:
    name: str
    kind: str
    cost: float  # per worker-hour
    workers: int = 0  # that have the memory asked
    free: int = 0  # of those, with a free thread now
    gpus: int = 0
    free_gpus: int = 0


def _sites(request: JobRequest, snapshot: Snapshot, costs: dict[str, float]) -> dict[str, _Site]:
    out: dict[str, _Site] = {}
    for w in snapshot.workers:
        s = out.get(w.site)
        if s is None:
            s = out[w.site] = _Site(w.site, w.kind, float(costs.get(w.site, w.cost_per_hour)))
        if w.memory_limit and w.memory_limit < request.memory:
            continue
        gpu = w.resources.get("GPU", 0) > 0
        free = w.processing < w.nthreads and w.used_resources.get("GPU", 0) < max(w.resources.get("GPU", 0), 1) \
            and (not w.memory_limit or w.memory_limit - w.memory_used >= request.memory)
        s.workers += 1
        s.free += free
        s.gpus += gpu
        s.free_gpus += gpu and free
    return out


def _costs(profile: Any) -> dict[str, float]:
    if profile is None:
        return {}
    if isinstance(profile, dict):
        return {str(k): float(v) for k, v in profile.items()}
    return {s.name: float(s.cost_per_hour) for s in profile.sites}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def choose(request: JobRequest, snapshot: Snapshot, profile: Any = None, *,
           free_gpus: int | None = None, move_penalty_per_gb: float = 1.0) -> Choice:
    """Where ``request`` should run on the cluster of ``snapshot``: the cheapest placement that fits.

    Capacity is the snapshot's workers (those with a free thread first; when none fit, all
    of them, and the job waits), costs per worker-hour come from ``profile`` (a Profile or
    ``{site: cost}``, else the snapshot's), ``free_gpus`` is what the GPU ledger has free on
    the machine (named when GPU workers run short). An impossible request raises a one-line
    ConfigError naming the constraint: sites, data locality, capacity or GPUs.
    """
    request.check()
    sites = _sites(request, snapshot, _costs(profile))
    if not sites:
        raise ConfigError("capacity: the cluster has no workers; scale a site up")
    allowed = list(sites)
    if request.sites:
        named = [s for s in allowed if s in request.sites or sites[s].kind in request.sites]
        unknown = [n for n in request.sites if n not in sites and n not in {s.kind for s in sites.values()}]
        if unknown:
            raise ConfigError(f"sites: the cluster has no site {unknown[0]!r} (sites: {', '.join(sites)})")
        allowed = named
    elif request.kind == "federate":
        allowed = [s for s in allowed if sites[s].kind == "edge"]
        if not allowed:
            raise ConfigError("sites: federate trains on edge sites and the cluster has none "
                              f"(sites: {', '.join(sites)})")
    pinned = request.data_site is not None and (not request.data_moves or request.kind == "federate")
    if request.data_site is not None and request.data_site not in sites and pinned:
        raise ConfigError(f"data locality: the data stays on {request.data_site}, which has no workers here "
                          f"(sites: {', '.join(sites)})")
    if pinned and request.kind != "federate":
        if request.data_site not in allowed:
            raise ConfigError(f"data locality: the data stays on {request.data_site}, outside the sites allowed")
        allowed = [request.data_site]  # type: ignore[list-item]
    if request.memory:
        fit = [s for s in allowed if sites[s].workers]
        if not fit:
            from dask.utils import format_bytes

            raise ConfigError(f"memory: no worker of {', '.join(allowed)} has {format_bytes(request.memory)}")
        allowed = fit if request.kind != "federate" else allowed
    _check_capacity(request, sites, allowed, pinned, free_gpus)
    waits = not _fits(request, sites, allowed, free=True)
    return _solve(request, sites, allowed, waits, move_penalty_per_gb)


def _fits(request: JobRequest, sites: dict[str, _Site], allowed: list[str], *, free: bool) -> bool:
    def n(s: str) -> int:
        return sites[s].free if free else sites[s].workers

    def g(s: str) -> int:
        return sites[s].free_gpus if free else sites[s].gpus

    if request.kind in _ONE_SITE:
        return any(n(s) >= request.workers and g(s) >= request.gpus for s in allowed)
    if request.kind == "federate":
        return all(n(s) >= 1 for s in allowed)
    return sum(n(s) for s in allowed) >= request.workers and sum(g(s) for s in allowed) >= request.gpus


def _check_capacity(request: JobRequest, sites: dict[str, _Site], allowed: list[str], pinned: bool,
                    free_gpus: int | None) -> None:
    """A one-line reason, naming the constraint, when the job fits the cluster even with every worker idle."""
    if _fits(request, sites, allowed, free=False):
        return
    ledger = f"; the GPU ledger has {_plural(free_gpus, 'free GPU')} on this machine" if free_gpus else ""
    where = f"the data's site {allowed[0]}" if pinned and len(allowed) == 1 else ""
    if request.kind == "federate":
        empty = [s for s in allowed if not sites[s].workers]
        raise ConfigError(f"capacity: site {empty[0]} has no worker for federate; scale it up or leave it out")
    if request.kind in _ONE_SITE:
        if not any(sites[s].workers >= request.workers for s in allowed):
            big = max(allowed, key=lambda s: sites[s].workers)
            raise ConfigError(f"capacity: {request.kind} takes {_plural(request.workers, 'worker')} on one site but "
                              f"{where or 'the largest site, ' + big}, has {sites[big].workers}; scale it up")
        most = max(allowed, key=lambda s: sites[s].gpus)
        raise ConfigError(f"GPUs: {request.kind} takes {_plural(request.gpus, 'GPU worker')} on one site but "
                          f"{where or most} has {sites[most].gpus}{ledger}")
    total = sum(sites[s].workers for s in allowed)
    if total < request.workers:
        raise ConfigError(f"capacity: {request.kind} takes {_plural(request.workers, 'worker')} and "
                          f"{where or 'the sites allowed'} have {total}; scale up or ask for fewer")
    raise ConfigError(f"GPUs: {request.kind} takes {_plural(request.gpus, 'GPU worker')} and "
                      f"{where or 'the sites allowed'} have {sum(sites[s].gpus for s in allowed)}{ledger}")


def _solve(request: JobRequest, sites: dict[str, _Site], allowed: list[str], waits: bool,
           move_penalty_per_gb: float) -> Choice:
    caps = [SiteCapacity(s, sites[s].kind, sites[s].workers if waits else sites[s].free, 0,
                         sites[s].gpus if waits else sites[s].free_gpus, sites[s].cost) for s in allowed]
    data, gb = request.data_site, request.data_gb
    if request.kind in _ONE_SITE:
        jobs = [Job(request.kind, threads=request.workers, gpus=request.gpus, hours=request.hours,
                    data_site=data, data_gb=gb, data_moves=request.data_moves)]
    elif request.kind == "tune":
        jobs = [Job(f"trial-{i}", threads=1, gpus=int(i < request.gpus), hours=request.hours, data_site=data,
                    data_gb=gb / request.workers, data_moves=request.data_moves) for i in range(request.workers)]
    else:
        jobs = [Job(f"site-{s}", threads=1, hours=request.hours, data_site=s, data_moves=False) for s in allowed]
    # Equal costs go to cloud sites: a job without data of its own is not sent to an edge box for nothing.
    bias = np.array([[1e-4 * j.threads * (c.kind != "cloud") for c in caps] for j in jobs])
    try:
        result = plan(jobs, caps, move_penalty_per_gb=move_penalty_per_gb, bias=bias)
    except ConfigError as e:
        raise ConfigError(f"capacity: {e}") from None
    counts: dict[str, list[int]] = {}
    for job in jobs:
        entry = counts.setdefault(result.placement[job.name], [0, 0])
        entry[0] += job.threads
        entry[1] += job.gpus
    picks = [Pick(s, sites[s].kind, n, g, round(n * sites[s].cost, 4)) for s, (n, g) in counts.items()]
    picks.sort(key=lambda p: (-p.workers, p.site))
    local = None if data is None else not any(p.site != data for p in picks)
    choice = Choice(request.kind, picks, round(sum(p.cost_per_hour for p in picks), 4), data, local,
                    round(result.moved_gb, 6), waits, [], result.status)
    choice.why = _why(request, sites, allowed, choice, move_penalty_per_gb)
    return choice


def _why(request: JobRequest, sites: dict[str, _Site], allowed: list[str], choice: Choice,
         penalty: float) -> list[str]:
    why = []
    others = ", ".join(f"{s} ${sites[s].cost:.2f}" for s in allowed if s not in choice.sites)
    for p in choice.picks:
        why.append(f"{p.site} costs ${sites[p.site].cost:.2f} per worker-hour and has "
                   f"{_plural(sites[p.site].free, 'free worker')} of {sites[p.site].workers}")
    if others:
        why.append(f"other sites allowed cost (per worker-hour): {others}")
    if request.gpus:
        why.append(f"{_plural(request.gpus, 'GPU worker')} asked: only sites with GPU workers could take them")
    if choice.data_local is True:
        why.append(f"the data stays on {choice.data_site}" + ("" if request.data_moves else " (it may not move)"))
    elif choice.data_local is False:
        why.append(f"the data moves off {choice.data_site}: the cheaper or only site that fits is elsewhere "
                   f"(moving {choice.moved_gb:g} GB counts ${penalty * choice.moved_gb:g})")
    if choice.waits:
        why.append("no site has enough idle workers now: the job waits for busy ones")
    return why
