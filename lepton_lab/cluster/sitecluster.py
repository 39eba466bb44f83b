"""Dask clusters whose workers belong to named sites: a spec per site, changes reconciled by Dask.

:class:`SiteCluster` (a ``LocalCluster``, scheduler in this process) and
:class:`AccountSiteCluster` (a ``SpecCluster`` whose scheduler is a process of
its own, under this OS account or another) share :class:`Sites`: workers are named ``<site>-<n>``,
:meth:`Sites.new_worker_spec` builds the spec of one planned worker the way its
site launches (local nanny, SSH, Kubernetes pod, another account), and
:meth:`Sites.reconcile` changes the spec and lets ``SpecCluster`` start and
retire workers itself, returning once every one has joined or failing with the
reason. Which GPU a worker gets is the caller's plan (see ``launcher``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import dask
from dask.utils import parse_timedelta
from distributed import LocalCluster, SpecCluster
from distributed.deploy.cluster import Cluster

from ..errors import ClusterError, first_line
from . import accounts
from .kubernetes import KubernetesSites, is_slot, slot_spec, split_joined
from .profiles import Profile
from .ssh import ssh_worker_spec
from .workers import WorkerPlan, kernel_environment, worker_spec

#: Seconds a bring-up or a scale may take before it is reported as failed.
START_TIMEOUT = 60.0


def advertised(listen: str, advertise: str) -> str:
    """The scheduler address others are told: ``listen`` with the advertised host (and port) when set."""
    if not advertise:
        return listen
    protocol, _, rest = listen.rpartition("://")
    port = rest.rsplit(":", 1)[-1]
    where = advertise if _has_port(advertise) else f"{advertise}:{port}"
    return f"{protocol or 'tcp'}://{where}"


def _has_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and not host.endswith(":")


class Sites:
    """What a ``SpecCluster`` needs to hold workers by site (mixed into the two cluster classes)."""

    # Set by :meth:`bind_sites` once the cluster exists.
    profile: Profile
    cluster_id: str = ""
    ca_dir: Path | None = None
    #: The owner's OS account, when the processes run under one that is not this process's.
    run_as: str | None = None
    #: The OS account of the scheduler's and local workers' own processes (None: in this process).
    account: str | None = None
    advertise: str = ""
    timeout: float = START_TIMEOUT
    #: The operator objects of the cluster's ``launch: kubernetes`` sites, once created.
    kubernetes: KubernetesSites | None = None

    # From SpecCluster (typed here for the mixin).
    worker_spec: dict[Any, dict[str, Any]]
    workers: dict[Any, Any]
    new_spec: dict[str, Any]
    scheduler_address: str
    scheduler_info: dict[str, Any]
    status: Any
    name: Any
    _correct_state: Any
    _futures: set[Any]
    sync: Any

    def bind_sites(self, profile: Profile, *, cluster_id: str, ca_dir: Path | None = None,
                   run_as: str | None = None, account: str | None = None, advertise: str = "",
                   timeout: float = START_TIMEOUT) -> None:
        self.profile = profile
        self.cluster_id = cluster_id
        self.ca_dir = ca_dir
        self.run_as = run_as
        self.account = account
        self.advertise = advertise
        self.timeout = timeout

    @property
    def address(self) -> str:
        """The scheduler address workers and clients are given: the advertised one when set."""
        return advertised(self.scheduler_address, self.advertise)

    # -- the spec ------------------------------------------------------------------------------

    def new_worker_spec(self, plan: WorkerPlan | None = None) -> dict[str, dict[str, Any]]:
        """The spec of one planned worker, launched as its site says.

        ``SpecCluster.scale(n)`` asks for workers with no site; a Lepton cluster
        grows by site, so that call is refused in one line.
        """
        if plan is None:
            raise ClusterError(f"cluster {self.name} grows by site: scale(n, site=...) or %lepton scale N --site S")
        site = self.profile.site(plan.site)
        if site.launch == "ssh":
            spec = ssh_worker_spec(plan, site, self.address, self.ca_dir, self.timeout)
        elif site.launch == "kubernetes":
            spec = slot_spec(plan, site)
        elif self.account is not None:
            assert self.ca_dir is not None
            spec = accounts.worker_spec(plan, account=self.account, ca_dir=self.ca_dir, timeout=self.timeout)
        else:
            spec = worker_spec(plan, dict(self.new_spec["options"]))
        return {plan.name: spec}

    def workers_of(self, site: str) -> list[str]:
        """Names of the workers of ``site`` in the current spec, in start order."""
        prefix = f"{site}-"
        return [n for n in self.worker_spec if isinstance(n, str) and n.startswith(prefix)
                and n[len(prefix):].isdigit()]

    # -- changing ------------------------------------------------------------------------------

    def reconcile(self, add: Iterable[WorkerPlan] = (), remove: Iterable[str] = (),
                  timeout: float | None = None) -> None:
        """Add the planned workers and retire ``remove``; return once the scheduler has exactly that set.

        ``SpecCluster`` starts and closes the workers (a remote one is done once
        its processes and files there are gone); a worker that fails to start
        fails the call with its reason, and one that never joins with a
        timeout naming it.
        """
        add, remove = list(add), list(remove)
        timeout = self.timeout if timeout is None else timeout
        with kernel_environment():
            # Pods of Kubernetes sites are counted, not named (the operator names them); a failure
            # here leaves the spec as it was.
            pods = self._scale_kubernetes(add, remove)
            for name in remove:
                self.worker_spec.pop(name, None)
            for plan in add:
                self.worker_spec.update(self.new_worker_spec(plan))
            try:
                self.sync(self._settle, timeout)
            except asyncio.TimeoutError:
                self._raise_missing(pods, timeout)
            except Exception as e:
                raise ClusterError(f"cluster {self.name}: {first_line(e)}") from None
            if pods:
                self._wait_for_pods(pods, timeout)

    async def _settle(self, timeout: float) -> None:
        # Shielded: a timeout reports the stragglers but leaves Dask's own reconciliation running.
        await asyncio.wait_for(asyncio.shield(self._correct_state()), timeout)
        failed = sorted(str(n) for n, w in self.workers.items()
                        if getattr(getattr(w, "status", None), "name", "") == "failed")
        if failed:
            reasons = [str(r) for n in failed if (r := getattr(self.workers[n], "error", None))]
            raise ClusterError("; ".join(reasons) if reasons else
                               f"workers {', '.join(failed)} failed to start; see the log above for the reason")

    def _joined(self, pods: dict[str, int]) -> tuple[set[str], dict[str, int]]:
        return split_joined({w["name"] for w in self.scheduler_info["workers"].values()}, pods)

    def _wait_for_pods(self, pods: dict[str, int], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._joined(pods)[1] == pods:
                return
            if self.status.name in ("closing", "closed", "failed"):
                break
            time.sleep(0.1)
        self._raise_missing(pods, timeout)

    def _raise_missing(self, pods: dict[str, int], timeout: float) -> None:
        want = {n for n, spec in self.worker_spec.items() if not is_slot(spec)}
        have, counts = self._joined(pods)
        missing = sorted(map(str, want - have)) + [f"{n - counts[s]} of site {s} (kubernetes)"
                                                   for s, n in pods.items() if counts[s] < n]
        raise ClusterError(f"cluster {self.name}: workers {', '.join(missing) or '?'} did not join "
                           f"within {timeout:.0f} s; check memory limits and the scheduler log")

    def _scale_kubernetes(self, add: list[WorkerPlan], remove: list[str]) -> dict[str, int]:
        """Set each Kubernetes site's worker-group replicas to its pods after the change; the workers expected."""
        sites = [s.name for s in self.profile.sites if s.launch == "kubernetes"]
        if not sites:
            return {}
        gone = set(remove)
        replicas = {s: len([n for n in self.workers_of(s) if n not in gone])
                    + sum(1 for p in add if p.site == s) for s in sites}
        if self.kubernetes is None:
            assert self.ca_dir is not None
            self.kubernetes = KubernetesSites(self.profile, cluster_id=self.cluster_id, scheduler=self.address,
                                              ca_dir=self.ca_dir)
        self.kubernetes.scale(replicas)
        return self.kubernetes.expected(replicas)

    # -- a lost worker ------------------------------------------------------------------------

    def _update_worker_status(self, op: str, msg: Any) -> None:
        """Keep the scheduler's view of the workers; close a worker lost for good.

        As in ``SpecCluster``, a worker the scheduler has not seen again
        ``distributed.deploy.lost-worker-timeout`` after it left is closed and dropped from
        ``workers``, so the spec can start it afresh. Each loss has its own count:
        ``SpecCluster``'s timer looks only at whether the name is missing when it
        fires, so a worker its nanny brought back and that was lost again within
        the timeout had its nanny closed, mid-restart, by the first loss's timer.
        """
        if op != "remove":
            super()._update_worker_status(op, msg)  # type: ignore[misc]
            return
        info = self.scheduler_info["workers"].get(msg)
        if info is None:
            return  # not in this view: nothing to keep or close
        name = info["name"]
        losses: Counter = self.__dict__.setdefault("_losses", Counter())
        losses[name] += 1
        delay = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
        asyncio.get_running_loop().call_later(delay, self._close_if_lost, name, losses[name])
        Cluster._update_worker_status(self, op, msg)  # type: ignore[arg-type]

    def _close_if_lost(self, name: Any, loss: int) -> None:
        if self.__dict__["_losses"][name] != loss or name not in self.workers:
            return  # lost again since (that loss decides), or already gone from the spec
        if any(w["name"] == name for w in self.scheduler_info["workers"].values()):
            return
        self._futures.add(asyncio.ensure_future(self.workers.pop(name).close()))

    def close_sites(self, timeout: float = 20) -> None:
        """Delete the Kubernetes objects, then close the scheduler and every worker. Never raises."""
        if self.kubernetes is not None:
            self.kubernetes.delete()
        with kernel_environment():
            try:
                self.close(timeout=timeout)  # type: ignore[attr-defined]
            except Exception:
                pass


class SiteCluster(Sites, LocalCluster):
    """A ``LocalCluster`` (scheduler in this process) whose workers are held by site."""


class AccountSiteCluster(Sites, SpecCluster):
    """A ``SpecCluster`` whose scheduler and workers are processes of their own (of ``account``), held by site."""
