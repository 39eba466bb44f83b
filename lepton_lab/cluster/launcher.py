"""Start, scale, stop and adopt Dask clusters whose workers sit on named sites.

:class:`ClusterManager` is the service: it owns every cluster this process started
(in the Jupyter server they outlive the kernel that asked for them) and knows
nothing about users — owners and teams are labels the caller passes in.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import itertools
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from distributed import LocalCluster, Security

from ..errors import AlreadyExists, ClusterError, ConfigError, NotFound
from . import gpus as gpu_discovery
from .profiles import Profile, SiteSpec
from .workers import SiteNanny, WorkerPlan, kernel_environment, plan_site, worker_name, worker_spec

#: Seconds a bring-up or a scale may take before it is reported as failed.
START_TIMEOUT = 60.0


@dataclass
class SiteInfo:
    """JSON shape of one site of a running cluster."""

    name: str
    kind: str
    workers: int
    gpus: int
    threads: int
    memory: str
    cost_per_hour: float  # per worker


@dataclass
class ClusterInfo:
    """JSON shape of a cluster, as the REST API and ``%lepton clusters`` show it."""

    id: str
    name: str
    owner: str
    team: str
    profile: str
    created: str
    status: str
    scheduler_address: str
    dashboard_link: str
    cost_per_hour: float
    sites: list[SiteInfo] = field(default_factory=list)
    tls: bool = False
    adopted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ManagedCluster:
    """One running Dask cluster: a ``LocalCluster`` whose workers are planned per site."""

    def __init__(
        self,
        cluster_id: str,
        name: str,
        profile: Profile,
        cluster: LocalCluster,
        gpus: list[gpu_discovery.GPU],
        *,
        owner: str = "",
        team: str = "",
        security: Security | None = None,
    ):
        self.id = cluster_id
        self.name = name
        self.profile = profile
        self.cluster = cluster
        self.gpus = gpus
        self.owner = owner
        self.team = team
        self.security = security
        self.created = datetime.now(timezone.utc)
        self.closed = False
        self._lock = threading.RLock()

    # -- starting -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        profile: Profile,
        *,
        name: str | None = None,
        owner: str = "",
        team: str = "",
        security: Security | None = None,
        host: str = "127.0.0.1",
        gpus: list[gpu_discovery.GPU] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> "ManagedCluster":
        """Start the scheduler and every site's workers; return when all have joined.

        Any failure closes what was started: no orphaned processes.
        """
        gpus = gpu_discovery.discover() if gpus is None else gpus
        # Plan before starting anything, so a bad GPU request fails with nothing to clean up.
        plans = [p for site in profile.sites for p in plan_site(site, gpus)]
        cluster_id = uuid.uuid4().hex[:12]
        with kernel_environment():
            cluster = LocalCluster(
                name=name or cluster_id,
                n_workers=0,
                threads_per_worker=1,
                processes=True,
                host=host,
                dashboard_address=f"{host}:0",
                worker_class=SiteNanny,
                security=security,
                protocol="tls://" if security is not None and security.require_encryption else None,
            )
            managed = cls(cluster_id, name or cluster_id, profile, cluster, gpus,
                          owner=owner, team=team, security=security)
            try:
                managed._apply(plans_add=plans, timeout=timeout)
            except BaseException:
                managed.close()
                raise
        _live.add(managed)
        return managed

    def _base_options(self) -> dict[str, Any]:
        return copy.copy(self.cluster.new_spec["options"])

    def _apply(self, *, plans_add=(), names_remove=(), timeout: float = START_TIMEOUT) -> None:
        """Change the worker spec and wait until the scheduler sees exactly that set."""
        gpu_indices = [g.index for g in self.gpus]
        with self._lock, kernel_environment():
            for name in names_remove:
                self.cluster.worker_spec.pop(name, None)
            for plan in plans_add:
                self.cluster.worker_spec[plan.name] = worker_spec(plan, self._base_options(), gpu_indices)
            self.cluster.scale(len(self.cluster.worker_spec))
            want = set(self.cluster.worker_spec)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                have = {w["name"] for w in self.cluster.scheduler_info["workers"].values()}
                # A nanny is done (and has given the environment back) once it is running.
                workers = self.cluster.workers
                if have == want and all(
                    n in workers and getattr(workers[n].status, "name", "") == "running" for n in want
                ):
                    return
                if self.cluster.status.name in ("closing", "closed", "failed"):
                    break
                failed = sorted(str(n) for n, w in self.cluster.workers.items()
                                if n in want and getattr(w, "status", None) is not None
                                and w.status.name == "failed")
                if failed:
                    raise ClusterError(f"cluster {self.name}: workers {', '.join(failed)} failed to start; "
                                       "see the log above for the reason")
                time.sleep(0.05)
            have = {w["name"] for w in self.cluster.scheduler_info["workers"].values()}
            missing = sorted(want - have)
            raise ClusterError(
                f"cluster {self.name}: workers {', '.join(map(str, missing)) or '?'} did not join "
                f"within {timeout:.0f} s; check memory limits and the scheduler log"
            )

    # -- what runs -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.cluster.scheduler_address

    @property
    def dashboard_link(self) -> str:
        try:
            return self.cluster.dashboard_link
        except Exception:  # no bokeh: no dashboard
            return ""

    def workers_of(self, site: str) -> list[str]:
        """Names of the workers of ``site`` in the current spec, in start order."""
        prefix = f"{site}-"
        return [n for n in self.cluster.worker_spec if isinstance(n, str) and n.startswith(prefix)
                and n[len(prefix):].isdigit()]

    def site_counts(self) -> dict[str, int]:
        return {s.name: len(self.workers_of(s.name)) for s in self.profile.sites}

    def gpu_workers_of(self, site: str) -> int:
        return sum(1 for n in self.workers_of(site)
                   if "GPU" in self.cluster.worker_spec[n]["options"].get("resources", {}))

    def costs(self) -> dict[str, float]:
        """Cost per worker-hour for each site."""
        return {s.name: s.cost_per_hour for s in self.profile.sites}

    def cost_per_hour(self) -> float:
        counts = self.site_counts()
        return round(sum(s.cost_per_hour * counts[s.name] for s in self.profile.sites), 4)

    # -- changing --------------------------------------------------------------------------

    def resolve_sites(self, site_or_kind: str) -> list[SiteSpec]:
        sites = self.profile.sites_matching(site_or_kind)
        if not sites:
            names = sorted({s.name for s in self.profile.sites} | {s.kind for s in self.profile.sites})
            raise ConfigError(f"cluster {self.name} has no site {site_or_kind!r} (sites: {', '.join(names)})")
        return sites

    def scale(self, n: int, site: str = "edge", timeout: float = START_TIMEOUT) -> dict[str, int]:
        """Set the number of workers of ``site`` (a name, or a kind: every site of that kind) to ``n``."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 256:
            raise ConfigError(f"scale: workers must be a whole number from 0 to 256, got {n!r}")
        if self.closed:
            raise ClusterError(f"cluster {self.name} is stopped")
        with self._lock:
            add: list[WorkerPlan] = []
            remove: list[str] = []
            for spec in self.resolve_sites(site):
                current = self.workers_of(spec.name)
                if n < len(current):
                    remove += current[n:]
                elif n > len(current):
                    # New workers take the lowest free numbers: edge-2 comes back as edge-2.
                    used = {int(name.rsplit("-", 1)[1]) for name in current}
                    free = (i for i in itertools.count() if i not in used)
                    more = dataclasses.replace(spec, workers=n - len(current), gpus=0)
                    add += [dataclasses.replace(p, name=worker_name(spec.name, next(free)))
                            for p in plan_site(more, [])]
            self._apply(plans_add=add, names_remove=remove, timeout=timeout)
        return self.site_counts()

    def close(self) -> None:
        """Stop every worker and the scheduler. Safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            with kernel_environment():
                try:
                    self.cluster.close(timeout=20)
                except Exception:
                    pass
        _live.discard(self)

    @property
    def status(self) -> str:
        if self.closed:
            return "stopped"
        return "running" if self.cluster.status.name == "running" else self.cluster.status.name

    def info(self) -> ClusterInfo:
        counts = self.site_counts() if not self.closed else {s.name: 0 for s in self.profile.sites}
        sites = [
            SiteInfo(s.name, s.kind, counts[s.name], self.gpu_workers_of(s.name) if not self.closed else 0,
                     s.threads, s.memory_text, s.cost_per_hour)
            for s in self.profile.sites
        ]
        return ClusterInfo(
            id=self.id, name=self.name, owner=self.owner, team=self.team, profile=self.profile.name,
            created=self.created.isoformat(timespec="seconds"), status=self.status,
            scheduler_address=self.address if not self.closed else "",
            dashboard_link=self.dashboard_link if not self.closed else "",
            cost_per_hour=self.cost_per_hour() if not self.closed else 0.0,
            sites=sites, tls=self.security is not None,
        )


class ClusterManager:
    """Every cluster this process owns, by id; names are unique among running clusters."""

    def __init__(self):
        self._clusters: dict[str, ManagedCluster] = {}
        self._lock = threading.RLock()

    def start(self, profile: Profile, *, name: str | None = None, reuse: bool = True,
              **kwargs: Any) -> tuple[ManagedCluster, bool]:
        """Start a cluster from ``profile``; with ``reuse``, a running one of that name is returned.

        Returns ``(cluster, started)``.
        """
        with self._lock:
            if name is not None:
                existing = self.by_name(name)
                if existing is not None:
                    if reuse:
                        return existing, False
                    raise AlreadyExists(f"a cluster named {name!r} is already running; pick another name")
            managed = ManagedCluster.start(profile, name=name, **kwargs)
            self._clusters[managed.id] = managed
            return managed, True

    def by_name(self, name: str) -> ManagedCluster | None:
        for c in self._clusters.values():
            if c.name == name and not c.closed:
                return c
        return None

    def get(self, key: str) -> ManagedCluster:
        """A running cluster by id or name."""
        with self._lock:
            c = self._clusters.get(key) or self.by_name(key)
            if c is None or c.closed:
                raise NotFound(f"no running cluster {key!r}")
            return c

    def list(self) -> list[ManagedCluster]:
        with self._lock:
            return [c for c in self._clusters.values() if not c.closed]

    def stop(self, key: str) -> None:
        with self._lock:
            c = self.get(key)
            self._clusters.pop(c.id, None)
        c.close()

    def stop_all(self) -> None:
        with self._lock:
            clusters = list(self._clusters.values())
            self._clusters.clear()
        for c in clusters:
            c.close()


_live: "weakref.WeakSet[ManagedCluster]" = weakref.WeakSet()


@atexit.register
def close_all() -> None:
    """Stop every cluster this process started (a kernel that exits takes its clusters with it)."""
    for c in list(_live):
        c.close()
