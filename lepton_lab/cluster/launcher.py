"""Start, scale, stop and adopt Dask clusters whose workers sit on named sites.

:class:`ClusterManager` is the service: it owns every cluster this process started
(in the Jupyter server they outlive the kernel that asked for them) and knows
nothing about users — owners and teams are labels the caller passes in.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from distributed import Client, Security

from ..errors import AlreadyExists, ClusterError, ConfigError, NotFound
from . import accounts
from . import gpus as gpu_discovery
from .gate import SiteGate, cluster_of
from .kubernetes import check_kubernetes_sites
from .ledger import LEDGER, GPULedger
from .profiles import Profile, SiteSpec
from .sitecluster import START_TIMEOUT, AccountSiteCluster, SiteCluster
from .ssh import check_ssh_sites
from .workers import SiteNanny, WorkerPlan, kernel_environment, plan_site, worker_name


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
    """One running Dask cluster: a :class:`~lepton_lab.cluster.sitecluster.SiteCluster` and its GPUs.

    The Dask cluster holds the workers by site; this object adds what it is
    (name, owner, team, profile) and which physical GPUs each worker holds.
    """

    # Kept here by the services: the server's own client.
    server_client: Client | None = None

    def __init__(
        self,
        cluster_id: str,
        name: str,
        profile: Profile,
        cluster: SiteCluster | AccountSiteCluster,
        gpus: list[gpu_discovery.GPU],
        *,
        owner: str = "",
        team: str = "",
        security: Security | None = None,
        ledger: GPULedger | None = None,
        advertise: str = "",
    ):
        self.id = cluster_id
        self.name = name
        self.profile = profile
        self.cluster = cluster
        self.gpus = gpus  # every device of this machine; the ledger says which are this cluster's
        self.ledger = ledger if ledger is not None else LEDGER
        self.gpu_of: dict[str, gpu_discovery.GPU] = {}  # worker name -> the device it owns
        self.owner = owner
        self.team = team
        self.security = security
        self.advertise = advertise
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
        advertise: str = "",
        gpus: list[gpu_discovery.GPU] | None = None,
        ledger: GPULedger | None = None,
        timeout: float = START_TIMEOUT,
        ca_dir: Path | None = None,
        run_as: str | None = None,
        out_of_process: bool = False,
    ) -> "ManagedCluster":
        """Start the scheduler and every site's workers; return when all have joined.

        The scheduler listens on ``host``; ``advertise`` (``host`` or
        ``host:port``) is the address workers and clients elsewhere are told to
        use, when it differs. ``gpus`` are this machine's devices (found by NVML
        when None); each GPU site gets devices of its own from ``ledger`` (the
        process's ledger when None). Any failure closes what was started and
        gives its GPUs back: no orphaned processes, no lost devices.
        Workers of ``launch: ssh`` sites start on their hosts with certificates
        from the cluster's CA in ``ca_dir`` (see :mod:`lepton_lab.cluster.ssh`).
        With ``run_as``, the scheduler and the local workers are processes of that
        OS account (see :mod:`lepton_lab.cluster.accounts`), never of this one.
        With ``out_of_process``, they are processes of this account, apart from this
        process: none of them shares its event loop.
        """
        check_ssh_sites(profile, tls=security is not None, ca_dir=ca_dir)
        check_kubernetes_sites(profile, tls=security is not None, ca_dir=ca_dir, host=host, advertise=advertise)
        account = run_as if run_as is not None else accounts.this_account() if out_of_process else None
        if account is not None and (security is None or ca_dir is None):
            raise ConfigError(f"a cluster run as {account} needs TLS and its own CA (start it through the server)")
        gpus = gpu_discovery.discover() if gpus is None else gpus
        ledger = ledger if ledger is not None else LEDGER
        cluster_id = uuid.uuid4().hex[:12]
        # Take GPUs and plan before starting anything, so a bad request fails with nothing to clean up.
        grants = ledger.reserve(cluster_id, name or cluster_id, team, profile.sites, gpus)
        try:
            plans = [p for site in profile.sites for p in plan_site(site, grants.get(site.name, []))]
            if account is not None:
                assert ca_dir is not None
                cluster: SiteCluster | AccountSiteCluster = AccountSiteCluster(
                    workers={},
                    scheduler=accounts.scheduler_spec(name=name or cluster_id, account=account, ca_dir=ca_dir,
                                                      host=host, timeout=timeout),
                    security=security, name=name or cluster_id)
            else:
                # A TLS cluster checks every peer's certificate and every worker's site (cluster/gate.py).
                gated = cluster_of(security)
                gate_kwargs = {"scheduler_kwargs": {"plugins": [SiteGate(gated)]}} if gated else {}
                with kernel_environment():
                    cluster = SiteCluster(
                        name=name or cluster_id,
                        n_workers=0,
                        threads_per_worker=1,
                        processes=True,
                        host=host,
                        # The dashboard stays on loopback whatever the scheduler listens on: it has no login.
                        dashboard_address="127.0.0.1:0",
                        worker_class=SiteNanny,
                        security=security,
                        protocol="tls://" if security is not None and security.require_encryption else None,
                        **gate_kwargs,
                    )
        except BaseException as e:
            ledger.release(cluster_id)
            if isinstance(e.__cause__, ClusterError):
                raise e.__cause__ from None  # distributed wraps why the scheduler did not start
            raise
        managed = cls(cluster_id, name or cluster_id, profile, cluster, gpus, owner=owner, team=team,
                      security=security, ledger=ledger, advertise=advertise)
        managed.gpu_of = {p.name: p.gpu for p in plans if p.gpu is not None}
        cluster.bind_sites(profile, cluster_id=cluster_id, ca_dir=ca_dir, run_as=run_as, account=account,
                           advertise=advertise, timeout=timeout)
        try:
            cluster.reconcile(add=plans)
        except BaseException:
            managed.close()
            raise
        _live.add(managed)
        return managed

    # -- what runs -------------------------------------------------------------------------

    @property
    def listen_address(self) -> str:
        """Where the scheduler listens (what this machine's own workers connect to)."""
        return self.cluster.scheduler_address

    @property
    def address(self) -> str:
        """The scheduler address workers and clients are given: the advertised one when set."""
        return self.cluster.address

    @property
    def ca_dir(self) -> Path | None:
        """The folder of the cluster's own CA (None without TLS)."""
        return self.cluster.ca_dir

    @property
    def run_as(self) -> str | None:
        """The OS account the scheduler and workers run under, when not this process's own."""
        return self.cluster.run_as

    @property
    def dashboard_link(self) -> str:
        """The dashboard on loopback, where it listens (distributed names the scheduler's host)."""
        try:
            link = urlsplit(self.cluster.dashboard_link)
        except Exception:  # no bokeh: no dashboard
            return ""
        return urlunsplit(link._replace(netloc=f"127.0.0.1:{link.port}")) if link.port else link.geturl()

    def workers_of(self, site: str) -> list[str]:
        """Names of the workers of ``site`` in the current spec, in start order."""
        return self.cluster.workers_of(site)

    def site_counts(self) -> dict[str, int]:
        return {s.name: len(self.workers_of(s.name)) for s in self.profile.sites}

    def gpu_workers_of(self, site: str) -> int:
        return sum(1 for n in self.workers_of(site)
                   if "GPU" in self.cluster.worker_spec[n]["options"].get("resources", {}) or n in self.gpu_of)

    def gpus_held(self) -> int:
        """Physical devices (GPUs or MIG instances) this cluster holds in the ledger."""
        return len(self.ledger.held_by(self.id))

    def _gpu_target(self, spec: SiteSpec) -> int | None:
        """How many GPU workers ``spec`` should have at most (None: every free GPU, for ``auto``)."""
        if spec.gpus == "auto":
            return None
        return int(spec.gpus or 0)

    def gpu_demand(self, n: int, site: str) -> int:
        """How many more devices ``scale(n, site)`` could take from the ledger (for quotas)."""
        more = 0
        for spec in self.resolve_sites(site):
            current = self.workers_of(spec.name)
            if not spec.gpus or n <= len(current):
                continue
            have = sum(1 for w in current if w in self.gpu_of)
            target = self._gpu_target(spec)
            room = len(self.ledger.free(self.gpus)) if target is None else max(target - have, 0)
            more += min(room, n - len(current))
        return more

    def _grow(self, spec: SiteSpec, current: list[str], n: int) -> list[WorkerPlan]:
        """Plans for ``n - len(current)`` new workers of ``spec``, GPU ones first while the site wants GPUs.

        New workers take the lowest free numbers (edge-2 comes back as edge-2)
        and the site's GPUs come back from the ledger: a number of GPUs is taken
        in full or refused with the ledger's one-line reason; ``auto`` takes
        whatever is free.
        """
        used = {int(name.rsplit("-", 1)[1]) for name in current}
        free_numbers = (i for i in itertools.count() if i not in used)
        extra = n - len(current)
        have_gpu = sum(1 for name in current if name in self.gpu_of)
        target = self._gpu_target(spec)
        got: list[gpu_discovery.GPU] = []
        if spec.gpus and self.gpus:
            want = None if target is None else min(max(target - have_gpu, 0), extra)
            if want is None or want:
                got = self.ledger.take(self.id, self.name, self.team, spec.name, want, self.gpus, at_most=extra)
        held = [g for g in self.gpus if g.key in set(self.ledger.held_by(self.id, spec.name))]
        peers = tuple(g.visible_as for g in held)
        plans = [WorkerPlan(worker_name(spec.name, next(free_numbers)), spec.name, spec.kind, spec.threads,
                            spec.memory, g, peers) for g in got]
        plans += [WorkerPlan(worker_name(spec.name, next(free_numbers)), spec.name, spec.kind, spec.threads,
                             spec.memory) for _ in range(extra - len(got))]
        return plans

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
            try:
                for spec in self.resolve_sites(site):
                    current = self.workers_of(spec.name)
                    if n < len(current):
                        # The highest-numbered go first, CPU workers before GPU ones, so a site keeps
                        # its GPUs as long as it can and edge-0 is the last to go.
                        newest = sorted(current, key=lambda w: int(w.rsplit("-", 1)[1]), reverse=True)
                        order = [w for w in newest if w not in self.gpu_of] + [w for w in newest if w in self.gpu_of]
                        remove += order[: len(current) - n]
                    elif n > len(current):
                        add += self._grow(spec, current, n)
            except BaseException:
                self._give_back([p.gpu for p in add if p.gpu is not None])
                raise
            self.gpu_of.update({p.name: p.gpu for p in add if p.gpu is not None})
            try:
                self.cluster.reconcile(add=add, remove=remove, timeout=timeout)
            finally:
                # A worker scaled away gives its GPU back to the ledger.
                self._give_back([self.gpu_of.pop(w) for w in remove if w in self.gpu_of])
        return self.site_counts()

    def _give_back(self, gpus: list[gpu_discovery.GPU]) -> None:
        if gpus:
            self.ledger.release(self.id, [g.key for g in gpus])

    def close(self) -> None:
        """Stop every worker and the scheduler. Safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.cluster.close_sites(timeout=20)
            self.gpu_of.clear()
            self.ledger.release(self.id)
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
    """Every cluster this process owns, by id; names are unique among running clusters.

    Its GPU ledger (the process's own unless one is given) gives each cluster
    devices no other cluster holds.
    """

    def __init__(self, ledger: GPULedger | None = None):
        self._clusters: dict[str, ManagedCluster] = {}
        self._lock = threading.RLock()
        self.ledger = ledger if ledger is not None else LEDGER

    def start(self, profile: Profile, *, name: str | None = None, reuse: bool = True,
              **kwargs: Any) -> tuple[ManagedCluster, bool]:
        """Start a cluster from ``profile``; with ``reuse``, a running one of that name is returned.

        Returns ``(cluster, started)``.
        """
        with self._lock:
            if name is not None:
                existing = self.by_name(name, team=kwargs.get("team"))
                if existing is not None:
                    if reuse:
                        return existing, False
                    raise AlreadyExists(f"a cluster named {name!r} is already running; pick another name")
            kwargs.setdefault("ledger", self.ledger)
            managed = ManagedCluster.start(profile, name=name, **kwargs)
            self._clusters[managed.id] = managed
            return managed, True

    def by_name(self, name: str, team: str | None = None) -> ManagedCluster | None:
        """The running cluster called ``name`` (in ``team``, when given: names are unique per team)."""
        for c in self._clusters.values():
            if c.name == name and not c.closed and (team is None or c.team == team):
                return c
        return None

    def get(self, key: str, teams: Iterable[str] | None = None) -> ManagedCluster:
        """A running cluster by id, or by name among the clusters of ``teams`` (all when None)."""
        with self._lock:
            c = self._clusters.get(key)
            if c is None:
                allowed = None if teams is None else set(teams)
                named = [x for x in self._clusters.values() if x.name == key and not x.closed
                         and (allowed is None or x.team in allowed)]
                if len(named) > 1:
                    raise ConfigError(f"clusters of teams {', '.join(sorted(x.team for x in named))} are called "
                                      f"{key!r}; name one by its id")
                c = named[0] if named else None
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
