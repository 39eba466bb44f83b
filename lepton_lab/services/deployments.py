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
from typing import Any

from ..errors import ConfigError
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
        return out

    def deployments(self, who: Actor, key: str) -> list[dict[str, Any]]:
        c = self.cluster(who, key, "clusters:read")
        client = self._client(c)
        return [domain.describe(client, r) for _, r in sorted(domain.deployments(client).items())]

    def undeploy(self, who: Actor, key: str, name: str) -> None:
        c = self.cluster(who, key, "clusters:use")
        domain.undeploy(self._client(c), name)
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

    def predict_deployed(self, who: Actor, key: str, name: str, inputs: Any) -> dict[str, Any]:
        """Predictions from deployment ``name`` of cluster ``key``, computed on its site."""
        future, record, _ = self.submit_deployed(who, key, name, inputs)
        return domain.wait_predict(future, record)
