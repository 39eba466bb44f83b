"""Clusters for a known user: permission, quota, TLS, audit, and the records that outlive them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .. import config
from ..cluster import allocation
from ..cluster.launcher import ClusterInfo, ManagedCluster
from ..cluster.profiles import Profile, all_profiles, resolve_profile
from ..errors import ClusterError, ConfigError, NotFound, PermissionDenied
from ..security.certs import ClusterCA
from ..security.files import write_atomic
from ..security.policy import Usage, check_quota
from ..security.spend import DEFAULT_PERIOD, check_spend_cap
from .base import Actor, ServicesBase
from .cluster_request import check_create_request


class ClusterServices(ServicesBase):
    """The cluster verbs of :class:`~lepton_lab.services.Services`."""

    def usage(self, *, user: str | None = None, team: str | None = None) -> Usage:
        gpus = workers = clusters = 0
        for c in self.manager.list():
            if (user is not None and c.owner != user) or (team is not None and c.team != team):
                continue
            clusters += 1
            counts = c.site_counts()
            workers += sum(counts.values())
            gpus += c.gpus_held()  # devices held in the GPU ledger, not workers claiming one
        return Usage(gpus=gpus, workers=workers, clusters=clusters)

    def profiles(self) -> list[Profile]:
        return list(all_profiles().values())

    def _plan_profile(self, profile: str | dict[str, Any], workers: dict[str, int] | None, gpus: int | str | None,
                      threads: int | None = None, memory: int | str | None = None) -> Profile:
        prof = resolve_profile(profile)
        workers = workers or {}
        return prof.with_overrides(cloud=workers.get("cloud"), edge=workers.get("edge"), gpus=gpus,
                                   threads=threads, memory=memory)

    @staticmethod
    def _demand(prof: Profile, found: list, free: int) -> Usage:
        """What ``prof`` would take: ``auto`` sites the ``free`` devices, others what they name."""
        from ..cluster.workers import gpu_count_for

        g = w = 0
        for s in prof.sites:
            n_gpu = 0
            if s.gpus:
                gpu_count_for(s, found)  # this machine has too few, whoever holds them: NoGPUError
                n_gpu = max(free - g, 0) if s.gpus == "auto" else int(s.gpus)
            g += n_gpu
            w += max(s.workers, n_gpu)
        return Usage(gpus=g, workers=w, clusters=1)

    def create_cluster(self, who: Actor, *, team: str, profile: str | dict[str, Any], name: str | None = None,
                       workers: dict[str, int] | None = None, gpus: int | str | None = None,
                       threads: int | None = None, memory: int | str | None = None) -> ManagedCluster:
        """Start a cluster for ``who`` in ``team``: the request's shape, permission, quota, TLS, audit."""
        check_create_request({"team": team, "profile": profile, "name": name, "workers": workers, "gpus": gpus,
                              "threads": threads, "memory": memory})
        if team not in self.policy.teams:
            raise ConfigError(f"unknown team {team!r} (teams: {', '.join(self.policy.teams)})")
        self.require(who, "clusters:create", team, resource=f"clusters:new:{team}")
        prof = self._plan_profile(profile, workers, gpus, threads, memory)
        from ..cluster import gpus as gpu_discovery

        found = gpu_discovery.discover()
        demand = self._demand(prof, found, len(self.manager.ledger.free(found)))
        with self.lock:
            try:
                quota = self.policy.quota_for(team=team)
                period = quota.spend_period or DEFAULT_PERIOD
                check_spend_cap(team, self.spend.team(team, period), quota.spend_cap, self.policy.source, period,
                                self.spend.month())
                check_quota(self.policy, who.name, team, self.usage(user=who.name),
                            self.usage(team=team), demand)
            except PermissionDenied as e:
                self.audit.record(who.name, "clusters:create", f"clusters:new:{team}", "deny", reason=str(e))
                raise
            if name is not None and self.manager.by_name(name, team) is not None:
                from ..errors import AlreadyExists

                raise AlreadyExists(f"a cluster named {name!r} is already running in team {team}; pick another name")
            if name is None:
                name = self._default_name(prof.name, who.name)
            # A new cluster takes the place of a stopped one of the same name.
            for key in [k for k, r in self.records.items()
                        if r.get("name") == name and r.get("team") == team and r.get("status") == "stopped"]:
                old = self.records.pop(key)
                if old.get("ca_dir"):
                    shutil.rmtree(old["ca_dir"], ignore_errors=True)
            self.start_watch()
            security, ca_dir = None, None
            cluster_key = name or f"{who.name}-{prof.name}"
            if self.tls:
                import uuid

                ca_dir = self.home / "keys" / "clusters" / uuid.uuid4().hex[:12]
                ca = ClusterCA.create(cluster_key, ca_dir)
                security = ca.security("scheduler", "worker", "client", common_name="lepton-server")
            try:
                managed, _ = self.manager.start(prof, name=name, reuse=False, owner=who.name, team=team,
                                                security=security, gpus=found, host=config.scheduler_host(),
                                                advertise=config.scheduler_advertise(), ca_dir=ca_dir,
                                                run_as=who.name if self.run_as_owner else None,
                                                out_of_process=self.out_of_process)
            except BaseException:
                if ca_dir is not None:
                    shutil.rmtree(ca_dir, ignore_errors=True)
                raise
            # What it takes to start it again (``start_again``): the profile as resolved, and its deployments.
            spec = prof.to_dict()
            spec.pop("builtin", None)
            self.records[managed.id] = {**managed.info().to_dict(), "ca_dir": str(ca_dir or ""),
                                        "profile_spec": spec, "deployments": {}}
            self._save_records()
            self.spend.start(managed.id)
        self.audit.record(who.name, "clusters:create", f"clusters:{managed.id}", "allow",
                          team=team, profile=prof.name, workers=demand.workers, gpus=demand.gpus)
        return managed

    def _default_name(self, profile: str, user: str) -> str:
        taken = {c.name for c in self.manager.list()} | {str(r.get("name")) for r in self.records.values()}
        return default_cluster_name(profile, user, taken)

    def cluster(self, who: Actor, key: str, permission: str = "clusters:read") -> ManagedCluster:
        """A running cluster ``who`` may act on with ``permission``; NotFound hides others' clusters."""
        try:
            # By id, or by name among the teams ``who`` may see: names are unique per team only.
            c = self.manager.get(key, teams=[t for t in self.policy.teams if self.allowed(who, "clusters:read", t)])
        except NotFound:
            record = self.records.get(key)
            if record is not None and self.allowed(who, "clusters:read", record["team"]):
                why = record.get("stopped_reason") or record.get("status")
                raise ClusterError(f"cluster {record['name']} is stopped ({why}); start it again or start a new one"
                                   ) from None
            raise NotFound(f"no cluster {key!r}") from None
        if not self.allowed(who, "clusters:read", c.team):
            raise NotFound(f"no cluster {key!r}")
        owner = c.owner if permission in ("clusters:scale", "clusters:delete", "clusters:use") else None
        self.require(who, permission, c.team, owner=owner, resource=f"clusters:{c.id}")
        return c

    def visible_clusters(self, who: Actor) -> list[dict[str, Any]]:
        """Running clusters and stopped records of the teams ``who`` may read."""
        out = []
        live = {c.id: c for c in self.manager.list()}
        for cid, record in list(self.records.items()):
            c = live.get(cid)
            info = c.info().to_dict() if c is not None else record
            if self.allowed(who, "clusters:read", info["team"]):
                out.append(self.describe(info))
        return out

    def describe(self, info: dict[str, Any] | ClusterInfo) -> dict[str, Any]:
        data = info.to_dict() if isinstance(info, ClusterInfo) else dict(info)
        data.pop("ca_dir", None)
        from .watch import spend_fields

        data.update(spend_fields(self, data["id"], data["team"]))
        if self.dashboard_prefix and data.get("dashboard_link"):
            data["dashboard_link"] = f"{self.dashboard_prefix}{data['id']}/status"
        data["connect_code"] = (
            "import lepton_lab\n"
            f"cluster = lepton_lab.connect_cluster({data['id']!r})\n"
            "client = cluster.client\nclient"
        )
        return data

    def scale_cluster(self, who: Actor, key: str, site: str, n: int) -> ManagedCluster:
        c = self.cluster(who, key, "clusters:scale")
        sites = c.resolve_sites(site)
        current = sum(len(c.workers_of(s.name)) for s in sites)
        extra = max(n * len(sites) - current, 0)
        with self.lock:
            try:
                check_quota(self.policy, c.owner, c.team, self.usage(user=c.owner), self.usage(team=c.team),
                            Usage(workers=extra, gpus=c.gpu_demand(n, site)))
            except PermissionDenied as e:
                self.audit.record(who.name, "clusters:scale", f"clusters:{c.id}", "deny", reason=str(e),
                                  site=site, workers=n)
                raise
            self._meter(c)  # the old worker count is charged up to now
            c.scale(n, site)
            record = {**self.records.get(c.id, {}), **c.info().to_dict()}
            scaled = {s.name for s in sites}
            for spec in (record.get("profile_spec") or {}).get("sites", []):
                if spec.get("name") in scaled:
                    spec["workers"] = n  # started again, the site has what it was last scaled to
            self.records[c.id] = record
            self._save_records()
        self.audit.record(who.name, "clusters:scale", f"clusters:{c.id}", "allow", site=site, workers=n)
        return c

    def stop_cluster(self, who: Actor, key: str) -> None:
        record = self.records.get(key)
        try:
            c = self.cluster(who, key, "clusters:delete")
        except ClusterError:
            # Already gone (server restart): deleting forgets the record.
            if record is None:
                raise
            self.require(who, "clusters:delete", record["team"], owner=record["owner"],
                         resource=f"clusters:{key}")
            with self.lock:
                self.records.pop(key, None)
                self._save_records()
            self.spend.forget(key)
            if record.get("ca_dir"):
                shutil.rmtree(record["ca_dir"], ignore_errors=True)
            return
        with self.lock:
            self._meter(c)
        self.manager.stop(c.id)
        with self.lock:
            rec = self.records.pop(c.id, {})
            self._save_records()
        self.spend.forget(c.id)
        if rec.get("ca_dir"):
            shutil.rmtree(rec["ca_dir"], ignore_errors=True)
        self.audit.record(who.name, "clusters:delete", f"clusters:{c.id}", "allow")

    def snapshot(self, who: Actor, key: str) -> dict[str, Any]:
        c = self.cluster(who, key, "clusters:read")
        client = self._client(c)
        # The id, not the name: the sidebar matches stream messages to the selected cluster by id.
        return allocation.snapshot(client, cluster=c.id, costs=c.costs()).to_dict()

    def plan(self, who: Actor, key: str, request: Any) -> dict[str, Any]:
        """Where the planner would put ``request`` (a ``JobRequest``) on cluster ``key`` now; nothing starts."""
        from ..cluster.placement import choose

        c = self.cluster(who, key, "clusters:read")
        snap = allocation.snapshot(self._client(c), cluster=c.id, costs=c.costs())
        return choose(request, snap, c.costs()).to_dict()

    def _client(self, c: ManagedCluster):
        # One client per cluster, owned by the server, for snapshots.
        client = getattr(c, "server_client", None)
        if client is None or client.status != "running":
            from ..cluster.clients import open_client

            client = open_client(c.address, security=c.security, timeout=10, set_as_default=False)
            c.server_client = client
        return client

    def credentials(self, who: Actor, key: str) -> dict[str, Any]:
        """A short-lived client certificate for ``who`` on this cluster (only with clusters:use)."""
        c = self.cluster(who, key, "clusters:use")
        self._require_own_code(who, c)
        ca_dir = self.records.get(c.id, {}).get("ca_dir")
        if not ca_dir:
            return {"tls": False, "scheduler_address": c.address}
        cert = ClusterCA.load(ca_dir).issue(who.name, role="client")
        with self.lock:  # a policy reload asks again with the groups the certificate was issued under
            self.cert_groups.setdefault(c.id, {})[who.name] = tuple(who.groups)
        self.audit.record(who.name, "clusters:use", f"clusters:{c.id}", "allow", issued="client-certificate")
        return {"tls": True, "scheduler_address": c.address, **cert.to_dict()}

    def _require_own_code(self, who: Actor, c: ManagedCluster) -> None:
        """A client certificate runs tasks as the account the cluster's workers run under:
        ``who``'s own (team deployment), or this server's, for its owner and trusted users only."""
        from ..security.authz import runs_code_here, untrusted_reason
        from ..security.identity import server_owner

        if c.run_as is not None:
            if c.run_as == who.name:
                return
            reason = (f"cluster {c.name} runs as {c.run_as}'s account: {who.name} may run tasks only on "
                      "clusters that run as their own")
        elif runs_code_here(self.policy, who.name, server_owner()):
            return
        else:
            reason = untrusted_reason(self.policy, who.name, "obtain cluster credentials")
        self.audit.record(who.name, "clusters:use", f"clusters:{c.id}", "deny", reason=reason)
        raise PermissionDenied(reason)

    def worker_certificate(self, who: Actor, key: str, site: str,
                           hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Any]:
        """A worker certificate bound to ``site`` of cluster ``key``, for a machine ``who`` joins to it.

        Joining a worker grows the cluster, so it takes ``clusters:scale`` on it (its owner, or a
        lead or admin of its team), and the worker runs the team's tasks: the owner rule of
        credentials applies too. The site need not be in the profile.
        """
        c = self.cluster(who, key, "clusters:scale")
        self._require_own_code(who, c)
        ca_dir = self.records.get(c.id, {}).get("ca_dir")
        if not ca_dir:
            raise ConfigError(f"cluster {c.name} does not use TLS; workers join it with --scheduler alone")
        # The profile's kind for its own sites; otherwise the worker's own rule (`lepton-lab worker`).
        kind = next((s.kind for s in c.profile.sites if s.name == site),
                    "edge" if site.startswith("edge") else "cloud")
        ca = ClusterCA.load(ca_dir)
        cert = ca.redeem(ca.join_token(site, kind=kind), hosts=hosts)
        self.audit.record(who.name, "clusters:join", f"clusters:{c.id}", "allow", site=site,
                          issued="worker-certificate")
        return {"scheduler_address": c.address, "site": site, **cert.to_dict()}

    def redeem_join(self, composite: str, hosts: tuple[str, ...]) -> dict[str, Any]:
        """Spend a join token (``<cluster id>.<token>``) on a worker certificate for its site."""
        cluster_id, _, token = str(composite).partition(".")
        c = next((x for x in self.manager.list() if x.id == cluster_id), None)
        record = self.records.get(cluster_id)
        if c is None or not record or not record.get("ca_dir"):
            raise PermissionDenied("this join token belongs to no running cluster; ask an admin for a new one")
        cert = ClusterCA.load(record["ca_dir"]).redeem(token, hosts=hosts)
        site = cert.common_name.rsplit("-worker-", 1)[0]
        self.audit.record(f"worker@{site}", "clusters:join", f"clusters:{c.id}", "allow", site=site)
        return {"scheduler_address": c.address, "site": site, **cert.to_dict()}

    def revoke_user(self, user: str, *, by: str = "lepton-server") -> dict[str, int]:
        """Revoke ``user``'s client certificates on every cluster, live ones at once (:mod:`.certs`)."""
        from .certs import revoke_user

        return revoke_user(self, user, by=by)

    def revoke_for(self, who: Actor, user: str) -> dict[str, int]:
        """``who`` revokes ``user``'s client certificates on the clusters of the teams ``who`` administers."""
        teams = [t for t in self.policy.teams if self.allowed(who, "policy:admin", t)]
        if not teams:
            self.require(who, "policy:admin", resource=f"users:{user}")
        from .certs import revoke_user

        clusters = [cid for cid, r in self.records.items() if r.get("team") in teams]
        return revoke_user(self, user, by=who.name, clusters=clusters,
                           reason=f"revoked by {who.name} (admin of {', '.join(teams)})")

    def start_watch(self) -> None:
        """Start the watch (spend, idle clusters, certificates, policy file) unless it runs already."""
        if self.watch is None:
            from .watch import ClusterWatch

            self.watch = ClusterWatch(self, config.watch_interval())

    def renew_certificates(self) -> list[str]:
        """Renew the certificates of running clusters that expire soon; the ids renewed (:mod:`.certs`)."""
        from .certs import renew_certificates

        return renew_certificates(self)

    # -- persistence -------------------------------------------------------------------------

    def _load_records(self) -> dict[str, dict[str, Any]]:
        if self.records_path is None or not self.records_path.exists():
            return {}
        try:
            data = json.loads(self.records_path.read_text())
        except (OSError, ValueError):
            return {}
        # Processes do not survive the server: whatever ran before a restart is gone now.
        # The file was last written while they ran, so its time is when they were last seen.
        last_seen = _iso(self.records_path.stat().st_mtime)
        for record in data.values():
            if record.get("status") != "stopped":
                _mark_stopped(record, SERVER_STOPPED, last_seen)
            record["scheduler_address"] = ""
            record["dashboard_link"] = ""
        return data

    def _save_records(self) -> None:
        if self.records_path is None:
            return
        write_atomic(self.records_path, json.dumps(self.records, indent=1).encode())

    def _meter(self, c: ManagedCluster) -> None:
        from .watch import meter

        meter(self, c)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        with self.lock:
            for c in self.manager.list():
                self._meter(c)
        for c in self.manager.list():
            client = getattr(c, "server_client", None)
            if client is not None:
                try:
                    client.close(timeout=5)
                except Exception:
                    pass
        self.manager.stop_all()
        with self.lock:
            now = _iso()
            for record in self.records.values():
                if record.get("status") != "stopped":
                    _mark_stopped(record, SERVER_STOPPED, now)
            self._save_records()


def default_cluster_name(profile: str, user: str, taken: set[str]) -> str:
    """``<profile>-<user>-<n>`` with the smallest ``n`` not in ``taken``: a name a reader can tell apart."""
    n = 1
    while f"{profile}-{user}-{n}" in taken:
        n += 1
    return f"{profile}-{user}-{n}"


#: Why a cluster that ran when the Jupyter server went away is stopped now.
SERVER_STOPPED = "the Jupyter server stopped"


def _iso(epoch: float | None = None) -> str:
    """An ISO 8601 UTC time (now by default), as cluster records keep their times."""
    import datetime

    moment = datetime.datetime.now(datetime.timezone.utc) if epoch is None else \
        datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")


def _mark_stopped(record: dict[str, Any], reason: str, when: str) -> None:
    record["status"] = "stopped"
    record["stopped_reason"] = reason
    record["stopped_at"] = when


def issue_join_token(key: str, site: str, home: Path | None = None) -> tuple[str, str]:
    """A one-time join token for a worker of ``site`` on cluster ``key`` (id or name), and its scheduler.

    Run on the server's machine (it reads the cluster records and CA the server keeps).
    """
    home = Path(home or config.home())
    path = home / "clusters.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    record = records.get(key) or next((r for r in records.values() if r.get("name") == key), None)
    if record is None or record.get("status") != "running":
        raise NotFound(f"no running cluster {key!r} (see GET /lepton/api/clusters)")
    if not record.get("ca_dir"):
        raise ConfigError(f"cluster {key!r} does not use TLS; workers join it with --scheduler alone")
    kind = next((str(s["kind"]) for s in record.get("sites") or [] if s.get("name") == site), None)
    token = ClusterCA.load(record["ca_dir"]).join_token(site, kind=kind)
    return f"{record['id']}.{token}", record["scheduler_address"]
