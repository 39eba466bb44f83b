"""Deployments for a known user: a team's model version kept loaded on a site of the team's cluster.

Deploying takes ``models:read`` and ``clusters:use`` on the cluster (its owner, or a
lead or admin of its team); predicting takes ``models:read`` and ``clusters:use``
in the cluster's team, since the work runs on the team's workers; listing takes
``clusters:read``. Another team's cluster does not exist for the asker (404).
The services load and verify the artifact with the team key, which stays here;
the workers receive the verified bytes over the cluster's TLS comms
(:mod:`lepton_lab.ml.deployments`).
"""

from __future__ import annotations

import shutil
from concurrent.futures import CancelledError
from typing import Any

from ..errors import AlreadyExists, ClusterError, ConfigError, LeptonError, NotFound
from ..ml import deployments as domain
from .base import Actor
from .clusters import ClusterServices
from .models import ModelServices, check_input_rank


class DeploymentServices(ClusterServices, ModelServices):
    """The deployment verbs of :class:`~lepton_lab.services.Services`."""

    def deploy(self, who: Actor, key: str, *, model: str, site: str, version: int | None = None,
               alias: str | None = None, name: str | None = None) -> dict[str, Any]:
        """Keep ``model`` (a version or alias, else the latest) loaded on ``site`` of cluster ``key``."""
        from ..registry import parse_ref

        c = self.cluster(who, key, "clusters:use")
        if version is not None and alias is not None:
            raise ConfigError("give version or alias, not both")
        model_name, ref_version, ref_alias = parse_ref(model)
        version = version if version is not None else ref_version
        alias = alias if alias is not None else ref_alias
        name = domain.check_name(name or model_name)
        c.resolve_sites(site)  # an unknown site is one line naming the cluster's sites
        self._model_team(who, c.team, "models:read", model_name)
        manifest = self.registry.manifest(model_name, c.team, version, alias=alias)
        path = self.registry.download(manifest.name, c.team, manifest.version)
        try:
            payload = path.read_bytes()
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        info = domain.record_info(manifest, team=c.team, alias=alias, by=who.name)
        # A class this process allowed itself (a kernel's notebook class, in-process) travels with the
        # model; a server allows none of its users' classes, so over REST only importable ones load.
        from ..registry.builders import registered_builder

        live = registered_builder(manifest.construction.target) if manifest.construction else None
        out = domain.deploy(self._client(c), name=name, site=site, payload=payload,
                            manifest_json=manifest.to_json(), info=info, builders=(live,) if live else ())
        self.audit.record(who.name, "clusters:deploy", f"clusters:{c.id}/deployments/{name}", "allow",
                          model=f"{c.team}/{manifest.name}@{manifest.version}", site=site)
        self._keep_deployment(c.id, name, {"model": manifest.name, "version": manifest.version, "site": site})
        return out

    def _keep_deployment(self, cluster_id: str, name: str, what: dict[str, Any] | None) -> None:
        """Record (or, with None, forget) a deployment in its cluster's record, for ``start_again``."""
        with self.lock:
            record = self.records.get(cluster_id)
            if record is None:
                return
            kept = record.setdefault("deployments", {})
            if what is None:
                kept.pop(name, None)
            else:
                kept[name] = what
            self._save_records()

    def start_again(self, who: Actor, key: str) -> tuple[Any, list[str], dict[str, str]]:
        """Start stopped cluster ``key`` again from its record: its team, name, profile and sizes as last
        scaled, and the model versions it served. ``(cluster, redeployed, {deployment: why not})``.

        It is a new cluster (new id, certificates and scheduler) that ``who`` owns: the same
        permission, quota and spend checks as any start. ``who`` must also be allowed to act on
        the stopped one (its owner, or a lead or admin of its team).
        """
        record = self.records.get(key) or min(  # else by name, a stopped one first
            (r for r in self.records.values()
             if r.get("name") == key and self.allowed(who, "clusters:read", r["team"])),
            key=lambda r: r.get("status") != "stopped", default=None)
        if record is None or not self.allowed(who, "clusters:read", record["team"]):
            raise NotFound(f"no cluster {key!r}")
        if record.get("status") != "stopped":
            raise AlreadyExists(f"cluster {record['name']} is running")
        self.require(who, "clusters:delete", record["team"], owner=record["owner"], resource=f"clusters:{record['id']}")
        spec = record.get("profile_spec")
        if not spec:
            raise ConfigError(f"cluster {record['name']} was recorded without its settings; start a new one")
        kept = dict(record.get("deployments") or {})
        managed = self.create_cluster(who, team=record["team"], profile=spec, name=record["name"])
        redeployed: list[str] = []
        missed: dict[str, str] = {}
        for name, d in sorted(kept.items()):
            try:
                self.deploy(who, managed.id, model=d["model"], version=d["version"], site=d["site"], name=name)
                redeployed.append(name)
            except LeptonError as e:
                missed[name] = str(e)
        self.audit.record(who.name, "clusters:start-again", f"clusters:{managed.id}", "allow",
                          previous=record["id"], redeployed=redeployed, not_redeployed=missed)
        return managed, redeployed, missed

    def deployments(self, who: Actor, key: str) -> list[dict[str, Any]]:
        c = self.cluster(who, key, "clusters:read")
        client = self._client(c)
        return [domain.describe(client, r) for _, r in sorted(domain.deployments(client).items())]

    def undeploy(self, who: Actor, key: str, name: str) -> None:
        c = self.cluster(who, key, "clusters:use")
        domain.undeploy(self._client(c), name)
        self._keep_deployment(c.id, name, None)
        self.audit.record(who.name, "clusters:undeploy", f"clusters:{c.id}/deployments/{name}", "allow")

    def submit_deployed(self, who: Actor, key: str, name: str, inputs: Any) -> tuple[Any, dict[str, Any], Any]:
        """The task computing deployment ``name``'s predictions on a site of cluster ``key``:
        ``(future, record, client)``, once ``who`` may score with it and ``inputs`` fit it."""
        c = self.cluster(who, key, "clusters:read")
        client = self._client(c)
        record = domain.deployment(client, name)
        self._model_team(who, c.team, "models:read", record["model"])
        self.require(who, "clusters:use", c.team, resource=f"clusters:{c.id}/deployments/{name}")
        check_input_rank(inputs, record.get("framework", ""), record.get("input_schema"), record["model"])
        future, record = domain.submit_predict(client, name, inputs)
        return future, record, client

    def predict_deployed(self, who: Actor, key: str, name: str, inputs: Any, *,
                         job: str | None = None) -> dict[str, Any]:
        """Predictions from deployment ``name`` of cluster ``key``, computed on its site.

        With ``job`` (an id the caller chose) the wait can be stopped from elsewhere with
        :meth:`cancel_predict`: a REST client that is interrupted, or goes away, does so.
        """
        future, record, client = self.submit_deployed(who, key, name, inputs)
        if job is None:
            return domain.wait_predict(future, record)
        with self.predicting.waiting(who.name, job, future, record, client):
            try:
                return domain.wait_predict(future, record)
            except CancelledError:
                raise ClusterError(f"{domain.predict_label(record)} was cancelled") from None

    def cancel_predict(self, who: Actor, job: str) -> str:
        """Stop ``who``'s prediction ``job``: its task cancelled, a worker still running it restarted.

        What was stopped, in one line (the same for a second request); NotFound when it ended unstopped.
        """
        return self.predicting.stop(who.name, job)
