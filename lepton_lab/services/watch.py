"""The cluster service's watch: spend metered while clusters run, idle clusters stopped, an edited policy read.

Every ``interval`` seconds (``LEPTON_WATCH_INTERVAL``, default 30) one pass over the running
clusters of a :class:`~lepton_lab.services.Services`:

* adds to each team's spend what its clusters cost since the last pass (their workers ×
  the time, and their cost per hour × the time), kept in the cluster records too;
* stops a cluster idle (no task, no client activity, as its scheduler reports it) for
  longer than its idle timeout: the smaller of its profile's ``idle_timeout`` and its
  team's quota ``idle_timeout`` (minutes). The record stays, stopped, with the reason the
  sidebar shows its owner, and the audit log has a line for it;
* reads the policy file again when it changed, revoking what the new one no longer permits
  (:mod:`lepton_lab.services.policy_reload`), and renews certificates close to expiry.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

from ..cluster.idle import activity
from ..cluster.launcher import ManagedCluster
from ..security.spend import DEFAULT_PERIOD, spend_view
from .policy_reload import reload_if_changed

# The services object this works for (``lepton_lab.services.Services``); not imported, as
# the services import this module.
Services = Any

log = logging.getLogger(__name__)

#: Who the audit log names for what the watch does.
WATCH_USER = "lepton-server"


def meter(services: Services, c: ManagedCluster) -> None:
    """Charge ``c``'s team for its time since the last tick; the cluster record shows its total."""
    spent = services.spend.tick(c.id, c.team, sum(c.site_counts().values()), c.cost_per_hour())
    record = services.records.get(c.id)
    if record is not None:
        record["spend"] = round(spent.spend, 4)
        record["worker_hours"] = round(spent.worker_hours, 4)


def idle_timeout(services: Services, c: ManagedCluster) -> tuple[float, str] | None:
    """The idle timeout of ``c`` in seconds and where it is set, or None when nothing sets one."""
    found = []
    if c.profile.idle_timeout:
        found.append((c.profile.idle_timeout, f"profile {c.profile.name}"))
    team = services.policy.quota_for(team=c.team).idle_timeout
    if team:
        found.append((team, f"the policy's quota for team {c.team}"))
    if not found:
        return None
    minutes, where = min(found)
    return minutes * 60, where


def sweep(services: Services) -> list[str]:
    """One pass: meter every running cluster, stop the idle ones; returns the ids stopped."""
    stopped: list[str] = []
    running = services.manager.list()
    if not running:
        return stopped
    for c in running:
        try:
            with services.lock:
                meter(services, c)
            limit = idle_timeout(services, c)
            if limit is None:
                continue
            reading = services._client(c).run_on_scheduler(activity)
            idle = services.idle.idle_for(c.id, reading)
            if idle >= limit[0]:
                stop_idle(services, c, idle, limit)
                stopped.append(c.id)
        except Exception as e:  # one cluster that cannot be read must not stop the watch
            log.warning("watch: cluster %s: %s: %s", c.name, type(e).__name__, e)
    with services.lock:
        services._save_records()
    return stopped


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.3g} min"


def stop_idle(services: Services, c: ManagedCluster, idle: float, limit: tuple[float, str]) -> None:
    """Stop ``c`` for being idle; its record keeps why, for the sidebar, and the audit log says so."""
    reason = (f"stopped after {_minutes(idle)} idle, no task and no client activity "
              f"(idle_timeout {_minutes(limit[0])}, {limit[1]})")
    with services.lock:
        meter(services, c)
        services.spend.stop(c.id)
    client = getattr(c, "server_client", None)
    if client is not None:
        try:
            client.close(timeout=5)
        except Exception:
            pass
    services.manager.stop(c.id)
    services.idle.forget(c.id)
    with services.lock:
        record = services.records.setdefault(c.id, c.info().to_dict())
        record.update(status="stopped", stopped_reason=reason,
                      stopped_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        record["scheduler_address"] = ""
        record["dashboard_link"] = ""
        services._save_records()
    services.audit.record(WATCH_USER, "clusters:delete", f"clusters:{c.id}", "allow", reason=reason,
                          owner=c.owner, team=c.team)


def team_spend(services: Services, team: str) -> dict[str, Any]:
    """What ``team`` spent over its cap's period (the policy's ``spend_period``: this month, UTC, by
    default; or in all), the cap and the period."""
    quota = services.policy.quota_for(team=team)
    period = quota.spend_period or DEFAULT_PERIOD
    return spend_view(services.spend.team(team, period), quota.spend_cap, period, services.spend.month())


def spend_fields(services: Services, cluster_id: str, team: str) -> dict[str, Any]:
    """What a cluster listing shows of spend: the cluster's own (in all) and its team's over the cap's period."""
    own = services.spend.cluster(cluster_id)
    team_view = team_spend(services, team)
    return {"spend": round(own.spend, 4), "worker_hours": round(own.worker_hours, 4),
            "team_spend": team_view["spend"], "spend_cap": team_view["spend_cap"],
            "spend_period": team_view["spend_period"], "spend_month": team_view["month"]}


class ClusterWatch:
    """A daemon thread that sweeps every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, services: Services, interval: float):
        self.services = services
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lepton-cluster-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """One pass of everything the watch does."""
        try:  # an edited policy file takes effect, and what it no longer permits is revoked
            reload_if_changed(self.services)
        except Exception as e:
            log.warning("watch: reloading the policy: %s: %s", type(e).__name__, e)
        sweep(self.services)
        try:  # certificates close to expiry are renewed on the running clusters (services.certs)
            self.services.renew_certificates()
        except Exception as e:
            log.warning("watch: renewing certificates: %s: %s", type(e).__name__, e)

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=30)
