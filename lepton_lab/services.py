"""The services behind every front door, for a known user.

``Services`` holds the policy, the audit log, personal tokens and the cluster
manager, and answers the questions that need both a user and a resource: may
this user create a cluster in this team, within quota? Which clusters may they
see? The REST handlers and the kernel's embedded transport both call these
methods; neither holds a rule of its own.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config
from .cluster import allocation
from .cluster.idle import IdleClock
from .cluster.launcher import ClusterInfo, ClusterManager, ManagedCluster
from .cluster.profiles import Profile, all_profiles, resolve_profile
from .errors import ClusterError, ConfigError, IntegrityError, LeptonError, NotFound, PermissionDenied
from .security.audit import AuditLog
from .security.certs import ClusterCA
from .security.files import write_atomic
from .security.policy import Policy, Usage, check_quota
from .security.spend import SpendMeter, check_spend_cap, spend_view
from .security.tokens import TokenStore


@dataclass
class Actor:
    """Who asks: a user name and the groups the policy maps (for rules given to groups)."""

    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def of(cls, user: Any) -> "Actor":
        return cls(user.username, tuple(getattr(user, "groups", ()) or ()))


class Services:
    """Policy-aware services shared by the server extension's handlers."""

    def __init__(self, policy: Policy, *, home: Path | None = None, audit: AuditLog | None = None,
                 tokens: TokenStore | None = None, manager: ClusterManager | None = None,
                 templates_dir: Path | None = None, tls: bool = True, run_as_owner: bool = False):
        self.policy = policy
        # The team deployment: each cluster's processes run under its owner's OS account.
        self.run_as_owner = run_as_owner
        self.home = Path(home or config.home())
        self.audit = audit or AuditLog(config.audit_path())
        self.tokens = tokens or TokenStore(config.tokens_path())
        self.manager = manager or ClusterManager()
        self.templates_dir = Path(templates_dir or config.templates_path())
        self.tls = tls
        self.lock = threading.RLock()
        self._audit_batcher = _AuditBatcher(self.audit)
        self.records_path = self.home / "clusters.json"
        self.records: dict[str, dict[str, Any]] = self._load_records()
        # Spend metered while clusters run, idle ones stopped: see services_watch.
        self.spend = SpendMeter(self.home / "spend.json")
        self.idle = IdleClock()
        self.watch: Any = None
        #: Where the server proxies dashboards (``<base_url>lepton/dashboard/``); empty: links as they listen.
        self.dashboard_prefix = ""

    async def record_async(self, user: str, action: str, resource: str, outcome: str, *,
                           reason: str = "", request_id: str | None = None, **detail: Any) -> Any:
        """Append an audit line off the event loop; concurrent decisions share one fsync.

        The request waits until its line is on disk (group commit): nothing is
        answered before it is recorded.
        """
        import asyncio

        item = dict(user=user, action=action, resource=resource, outcome=outcome, reason=reason,
                    request_id=request_id, detail=detail)
        return await asyncio.wrap_future(self._audit_batcher.submit(item))

    # -- permissions -------------------------------------------------------------------------

    def allowed(self, who: Actor, permission: str, team: str | None = None, owner: str | None = None) -> bool:
        return self.policy.allows(who.name, who.groups, permission, team, owner=owner)

    def require(self, who: Actor, permission: str, team: str | None = None, *, owner: str | None = None,
                resource: str = "") -> None:
        """Raise PermissionDenied (and audit it) unless ``who`` holds ``permission`` in ``team``."""
        if self.allowed(who, permission, team, owner):
            return
        reason = self.policy.explain(who.name, who.groups, permission, team, owner=owner)
        self.audit.record(who.name, permission, resource or f"team:{team}", "deny", reason=reason)
        raise PermissionDenied(reason)

    def whoami(self, who: Actor) -> dict[str, Any]:
        roles = self.policy.roles_of(who.name, who.groups)
        quotas = {}
        for team in roles:
            q = self.policy.quota_for(team=team)
            quotas[team] = {**dataclasses.asdict(q), "used": dataclasses.asdict(self.usage(team=team))}
        uq = self.policy.quota_for(user=who.name)
        return {
            "name": who.name, "display_name": who.name, "teams": list(roles), "roles": roles,
            "groups": list(who.groups),
            "permissions": sorted(self.policy.permissions(who.name, who.groups)),
            "quotas": quotas,
            "user_quota": {**dataclasses.asdict(uq), "used": dataclasses.asdict(self.usage(user=who.name))},
            "spend": {team: spend_view(self.spend.team(team), self.policy.quota_for(team=team).spend_cap)
                      for team in roles},
        }

    # -- clusters ----------------------------------------------------------------------------

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

    def _plan_profile(self, profile: str, workers: dict[str, int] | None, gpus: int | None,
                      threads: int | None = None, memory: str | None = None) -> Profile:
        prof = resolve_profile(profile)
        workers = workers or {}
        for key in workers:
            if key not in ("cloud", "edge"):
                raise ConfigError(f"workers: keys are cloud and edge, got {key!r}")
        return prof.with_overrides(cloud=workers.get("cloud"), edge=workers.get("edge"), gpus=gpus,
                                   threads=threads, memory=memory)

    @staticmethod
    def _demand(prof: Profile, found: list, free: int) -> Usage:
        """What ``prof`` would take: ``auto`` sites the ``free`` devices, others what they name."""
        from .cluster.workers import gpu_count_for

        g = w = 0
        for s in prof.sites:
            n_gpu = 0
            if s.gpus:
                gpu_count_for(s, found)  # this machine has too few, whoever holds them: NoGPUError
                n_gpu = max(free - g, 0) if s.gpus == "auto" else int(s.gpus)
            g += n_gpu
            w += max(s.workers, n_gpu)
        return Usage(gpus=g, workers=w, clusters=1)

    def create_cluster(self, who: Actor, *, team: str, profile: str, name: str | None = None,
                       workers: dict[str, int] | None = None, gpus: int | None = None,
                       threads: int | None = None, memory: str | None = None) -> ManagedCluster:
        """Start a cluster for ``who`` in ``team``: permission, quota, TLS, audit."""
        if team not in self.policy.teams:
            raise ConfigError(f"unknown team {team!r} (teams: {', '.join(self.policy.teams)})")
        self.require(who, "clusters:create", team, resource=f"clusters:new:{team}")
        prof = self._plan_profile(profile, workers, gpus, threads, memory)
        from .cluster import gpus as gpu_discovery

        found = gpu_discovery.discover()
        demand = self._demand(prof, found, len(self.manager.ledger.free(found)))
        with self.lock:
            try:
                check_spend_cap(team, self.spend.team(team), self.policy.quota_for(team=team).spend_cap,
                                self.policy.source)
                check_quota(self.policy, who.name, team, self.usage(user=who.name),
                            self.usage(team=team), demand)
            except PermissionDenied as e:
                self.audit.record(who.name, "clusters:create", f"clusters:new:{team}", "deny", reason=str(e))
                raise
            if name is not None and self.manager.by_name(name, team) is not None:
                from .errors import AlreadyExists

                raise AlreadyExists(f"a cluster named {name!r} is already running in team {team}; pick another name")
            if name is None:
                name = self._default_name(prof.name, who.name)
            # A new cluster takes the place of a stopped one of the same name.
            for key in [k for k, r in self.records.items()
                        if r.get("name") == name and r.get("team") == team and r.get("status") == "stopped"]:
                del self.records[key]
            if self.watch is None:  # meters spend and stops idle clusters from the first one on
                from .services_watch import ClusterWatch

                self.watch = ClusterWatch(self, config.watch_interval())
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
                                                run_as=who.name if self.run_as_owner else None)
            except BaseException:
                if ca_dir is not None:
                    shutil.rmtree(ca_dir, ignore_errors=True)
                raise
            managed.ca_dir = ca_dir
            self.records[managed.id] = {**managed.info().to_dict(), "ca_dir": str(ca_dir or "")}
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
                raise ClusterError(f"cluster {record['name']} is stopped ({why}); start a new one") from None
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
        from .services_watch import spend_fields

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
            check_quota(self.policy, c.owner, c.team, self.usage(user=c.owner), self.usage(team=c.team),
                        Usage(workers=extra, gpus=c.gpu_demand(n, site)))
            self._meter(c)  # the old worker count is charged up to now
            c.scale(n, site)
            self.records[c.id] = {**c.info().to_dict(), "ca_dir": self.records.get(c.id, {}).get("ca_dir", "")}
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

    def _client(self, c: ManagedCluster):
        # One client per cluster, owned by the server, for snapshots.
        client = getattr(c, "server_client", None)
        if client is None or client.status != "running":
            from distributed import Client

            client = Client(c.address, security=c.security, timeout=10, set_as_default=False)
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
        self.audit.record(who.name, "clusters:use", f"clusters:{c.id}", "allow", issued="client-certificate")
        return {"tls": True, "scheduler_address": c.address, **cert.to_dict()}

    def _require_own_code(self, who: Actor, c: ManagedCluster) -> None:
        """A client certificate runs tasks as the account the cluster's workers run under:
        ``who``'s own (team deployment), or this server's, for its owner and trusted users only."""
        from .security.authz import runs_code_here, untrusted_reason
        from .security.identity import server_owner

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
        """Revoke ``user``'s client certificates on every cluster, live ones at once (:mod:`.services_certs`)."""
        from .services_certs import revoke_user

        return revoke_user(self, user, by=by)

    def renew_certificates(self) -> list[str]:
        """Renew the certificates of running clusters that expire soon; the ids renewed (:mod:`.services_certs`)."""
        from .services_certs import renew_certificates

        return renew_certificates(self)

    # -- models ------------------------------------------------------------------------------

    def studies(self):
        """The teams' hyper-parameter studies, under this policy (:mod:`lepton_lab.services_studies`)."""
        from .services_studies import StudyStore

        return StudyStore(self.policy, home=self.home, audit=self.audit)

    def privacy(self):
        """The teams' privacy ledgers: DP spending per dataset against the policy's budgets."""
        from .services_privacy import PrivacyLedger

        return PrivacyLedger(self.policy, home=self.home, audit=self.audit)

    @property
    def registry(self):
        if getattr(self, "_registry", None) is None:
            from .registry import Registry
            from .security.vault import KeyRing

            # Publishing itself asks the policy, and the alias log records the grant.
            self._registry = Registry(config.registry_path(), KeyRing(config.keys_path() / "vault"),
                                      authorize=lambda *asked: self.policy.allows(*asked))
        return self._registry

    def _model_team(self, who: Actor, team: str, permission: str, ref: str) -> None:
        """Models of a team the user may not read do not exist for them (404, never 403)."""
        if team not in self.policy.teams or not self.allowed(who, "models:read", team):
            self.audit.record(who.name, permission, f"models:{team}/{ref}", "deny",
                              reason=f"{who.name} may not read models of {team}")
            raise NotFound(f"no model {ref!r}")
        self.require(who, permission, team, resource=f"models:{team}/{ref}")

    def models(self, who: Actor, team: str | None = None) -> list[dict[str, Any]]:
        teams = [team] if team else self.policy.teams_of(who.name, who.groups)
        out = []
        for t in teams:
            if t in self.policy.teams and self.allowed(who, "models:read", t):
                out += [{**dataclasses.asdict(m), "team": t} for m in self.registry.models(t)]
        return out

    def model_versions(self, who: Actor, team: str, name: str) -> dict[str, Any]:
        self._model_team(who, team, "models:read", name)
        return {"name": name, "team": team,
                "versions": [dataclasses.asdict(v) for v in self.registry.versions(name, team)],
                "aliases": self.registry.aliases(name, team)}

    def model_manifest(self, who: Actor, team: str, ref: str):
        from .registry import parse_ref

        name, version, alias = parse_ref(ref)
        self._model_team(who, team, "models:read", name)
        return self.registry.manifest(name, team, version, alias=alias)

    def model_artifact(self, who: Actor, team: str, ref: str):
        """(manifest, path of the verified, decrypted artifact) — the caller deletes the file."""
        manifest = self.model_manifest(who, team, ref)
        path = self.registry.download(manifest.name, team, manifest.version)
        self.audit.record(who.name, "models:read", f"models:{team}/{manifest.name}@{manifest.version}", "allow")
        return manifest, path

    def publish_model(self, who: Actor, team: str, name: str, payload: bytes, meta: dict[str, Any]):
        from .registry.serialize import from_payload

        self._model_team(who, team, "models:publish", name)
        allowed = {"framework", "framework_version", "format", "construction", "metrics", "input_schema",
                   "lineage", "compression", "description", "tags", "alias"}
        unknown = sorted(set(meta) - allowed)
        if unknown:
            raise ConfigError(f"unknown manifest field {unknown[0]!r}")
        ser = from_payload(payload, framework=str(meta.get("framework", "")),
                           framework_version=str(meta.get("framework_version", "")),
                           format=str(meta.get("format", "")), construction=meta.get("construction"))
        manifest = self.registry.publish(
            ser, name=name, team=team, user=who.name, metrics=meta.get("metrics"),
            input_schema=meta.get("input_schema"), lineage=meta.get("lineage"),
            compression=meta.get("compression"), description=meta.get("description") or "",
            tags=meta.get("tags") or (), alias=meta.get("alias"), groups=who.groups)
        self.audit.record(who.name, "models:publish", f"models:{team}/{name}@{manifest.version}", "allow")
        return manifest

    def set_alias(self, who: Actor, team: str, name: str, alias: str, version: int) -> None:
        self._model_team(who, team, "models:publish", name)
        self.registry.set_alias(name, team, alias, version, user=who.name)
        self.audit.record(who.name, "models:publish", f"models:{team}/{name}", "allow", alias=alias, version=version)

    def delete_model_version(self, who: Actor, team: str, name: str, version: int) -> None:
        self._model_team(who, team, "models:delete", name)
        self.registry.delete_version(name, team, version, user=who.name)
        self.audit.record(who.name, "models:delete", f"models:{team}/{name}@{version}", "allow")

    def predict(self, who: Actor, team: str, ref: str, inputs: Any) -> dict[str, Any]:
        from .ml.serve import predict_with

        manifest = self.model_manifest(who, team, ref)
        key = (team, manifest.name, manifest.version)
        cache = self.__dict__.setdefault("_served", {})
        model = cache.get(key)
        if model is None:
            try:
                model = self.registry.load(manifest.name, team=team, version=manifest.version).model
            except LeptonError:
                raise
            except Exception as e:  # an artifact its framework cannot read is bad data, not a server fault
                raise IntegrityError(f"{manifest.name} v{manifest.version} does not load as "
                                     f"{manifest.framework} ({type(e).__name__}); publish it again") from None
            cache.clear()  # one model kept warm; the registry is the source of truth
            cache[key] = model
        _check_input_rank(inputs, manifest)
        try:
            return predict_with(model, inputs, manifest)
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ConfigError(f"inputs do not fit {manifest.name} v{manifest.version}: {first}") from None

    # -- templates ---------------------------------------------------------------------------

    def templates(self, who: Actor) -> list[dict[str, Any]]:
        from .templates import list_templates

        return [t for t in list_templates(self.templates_dir)
                if self.allowed(who, "templates:read", t["team"])]

    def template_path(self, who: Actor, team: str, name: str) -> Path:
        from .templates import template_file

        if team not in self.policy.teams:
            raise NotFound(f"no template {team}/{name}")
        if not self.allowed(who, "templates:read", team):
            # Another team's templates are not even named.
            self.audit.record(who.name, "templates:read", f"templates:{team}/{name}", "deny",
                              reason=self.policy.explain(who.name, who.groups, "templates:read", team))
            raise NotFound(f"no template {team}/{name}")
        return template_file(self.templates_dir, team, name)

    # -- persistence -------------------------------------------------------------------------

    def _load_records(self) -> dict[str, dict[str, Any]]:
        if not self.records_path.exists():
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
        write_atomic(self.records_path, json.dumps(self.records, indent=1).encode())

    def _meter(self, c: ManagedCluster) -> None:
        from .services_watch import meter

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


def _check_input_rank(inputs: Any, manifest: Any) -> None:
    """Rows of features for a model of 2-D input (its schema says so, or it is XGBoost)."""
    import numpy as np

    schema = getattr(manifest, "input_schema", None)
    shape = schema.get("shape") if isinstance(schema, dict) else getattr(schema, "shape", None)
    two_d = (isinstance(shape, (list, tuple)) and len(shape) == 2) or manifest.framework == "xgboost"
    try:
        rank = np.ndim(inputs)
    except ValueError:
        raise ConfigError("inputs must be a rectangular list of rows of numbers") from None
    if two_d and rank not in (1, 2):
        raise ConfigError(f"inputs have {rank} dimensions; {manifest.name} takes rows of features (2-D)")


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


class _AuditBatcher:
    """One writer thread that commits whatever decisions are waiting as one batch."""

    def __init__(self, audit: AuditLog):
        import queue

        self.audit = audit
        self.queue: "queue.Queue[tuple[dict, Any]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="lepton-audit", daemon=True)
        self.thread.start()

    def submit(self, item: dict[str, Any]):
        from concurrent.futures import Future

        future: Future = Future()
        self.queue.put((item, future))
        return future

    def _run(self) -> None:
        import queue

        while True:
            batch = [self.queue.get()]
            while len(batch) < 512:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                entries = self.audit.record_many([item for item, _ in batch])
            except Exception as e:  # every waiter learns the line was not written
                for _, future in batch:
                    future.set_exception(e)
                continue
            for (_, future), entry in zip(batch, entries):
                future.set_result(entry)
