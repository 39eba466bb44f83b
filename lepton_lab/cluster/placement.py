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
         time_limit: float = 5.0, bias: np.ndarray | None = None, gap: float = 0.01) -> Plan:
    """The cheapest placement of ``jobs`` on ``sites``; ConfigError naming a job that fits nowhere.

    ``bias`` (jobs × sites) is added to the objective only, to break ties between equal costs.
    Large fleets may stop ``gap`` (a fraction) above the optimum's lower bound; ``status`` says so.
    """
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

    threads = np.array([j.threads for j in jobs], float)
    hours = np.array([j.hours for j in jobs], float)
    per_hour = np.array([s.cost_per_thread_hour for s in sites], float)
    cost = np.outer(threads * hours, per_hour)
    for j, job in enumerate(jobs):
        if job.data_site and job.data_gb:
            cost[j] += move_penalty_per_gb * job.data_gb
            if job.data_site in site_index:
                cost[j, site_index[job.data_site]] -= move_penalty_per_gb * job.data_gb
    c = cost.ravel() + (bias.ravel() if bias is not None else 0.0)

    need = np.array([[j.threads, j.memory, j.gpus] for j in jobs], float)
    caps = np.array([[s.threads, s.memory, s.gpus] for s in sites], float)
    x, status = _assign(c.reshape(J, S), allowed, need, caps, time_limit, gap)
    placement = {jobs[j].name: sites[int(x[j])].name for j in range(J)}
    moved = sum(job.data_gb for job in jobs if job.data_site and placement[job.name] != job.data_site)
    total = float(cost[np.arange(J), x].sum())
    return Plan(placement, round(total, 6), moved, status, {"objective": float(c.reshape(J, S)[np.arange(J), x].sum())})


def _assign(c: np.ndarray, allowed: np.ndarray, need: np.ndarray, caps: np.ndarray, time_limit: float,
            gap: float) -> tuple[np.ndarray, str]:
    """Each job's site index, minimising ``c`` within capacity, and how close to optimal that is.

    Small problems go straight to the MILP. Large ones solve the LP relaxation first: on
    fleets like ours it is nearly integral, so the jobs it places whole are kept and only
    the split ones (then also the jobs on the sites they are split over) go to the MILP,
    on the capacity left. The LP's cost bounds the optimum from below: a placement within
    ``gap`` of it is returned with that gap; else the full MILP decides.
    """
    J, S = c.shape
    if J * S > 4000:
        lp = _milp(c, allowed, need, caps, integral=False, time_limit=time_limit)
        if lp.x is None:
            raise ConfigError(f"the jobs do not fit together on these sites ({lp.message})")
        x = lp.x.reshape(J, S)
        site = x.argmax(1)
        whole = x[np.arange(J), site] > 1 - 1e-6
        bound = float(lp.fun)
        touched = (x[~whole] > 1e-6).any(0)
        for keep in (whole, whole & ~touched[site]):
            left = caps - np.array([need[keep & (site == s)].sum(0) for s in range(S)])
            redo = np.flatnonzero(~keep)
            if len(redo):
                sub = _milp(c[redo], allowed[redo], need[redo], np.maximum(left, 0), integral=True,
                            time_limit=time_limit)
                if sub.x is None:
                    continue
                site[redo] = np.round(sub.x).reshape(len(redo), S).argmax(1)
            off = (c[np.arange(J), site].sum() - bound) / max(abs(bound), 1e-9)
            if off <= 1e-7:
                return site, "optimal"
            if off <= gap:
                return site, f"within {off:.2%} of optimal"
    full = _milp(c, allowed, need, caps, integral=True, time_limit=time_limit)
    if full.x is None:
        raise ConfigError(f"the jobs do not fit together on these sites ({full.message})")
    return np.round(full.x).reshape(J, S).argmax(1), "optimal" if full.status == 0 else str(full.message)


def _milp(c: np.ndarray, allowed: np.ndarray, need: np.ndarray, caps: np.ndarray, *, integral: bool,
           time_limit: float):
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
    return milp(c.ravel(), constraints=LinearConstraint(vstack(blocks).tocsr(), np.concatenate(lo), np.concatenate(hi)),
                integrality=np.full(J * S, 1 if integral else 0), bounds=Bounds(np.zeros(J * S), allowed.ravel()),
                options={"time_limit": time_limit})


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


# =========================================================================== a job on a live cluster

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
        from html import escape

        rows = "".join(f"<tr><td>{escape(p.site)}</td><td>{escape(p.kind)}</td><td>{p.workers}</td>"
                       f"<td>{p.gpus}</td><td>${p.cost_per_hour:.2f}/h</td></tr>" for p in self.picks)
        why = "".join(f"<li>{escape(w)}</li>" for w in self.why)
        return (f"<div><b>{escape(self.line())}</b><table><tr><th>site</th><th>kind</th><th>workers</th>"
                f"<th>GPUs</th><th>cost</th></tr>{rows}</table><ul>{why}</ul></div>")


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
