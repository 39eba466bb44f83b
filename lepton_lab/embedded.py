"""The services in this process: the kernel's in-process door to the same :class:`Services`.

Plain IPython, scripts and tests reach the services without a Jupyter server: the
local user asks as themselves, under the policy file in ``LEPTON_HOME`` when there
is one, else the default policy (which makes them admin of every team). Every verb
goes through :class:`~lepton_lab.services.Services`, so permissions, quotas, audit
lines and TLS are the same as behind the server. Only the cluster records and the
spend meter live in memory: a kernel's clusters end with it, and other kernels
sharing ``LEPTON_HOME`` keep theirs.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
from typing import TYPE_CHECKING, Any

from distributed import Security

from . import config
from .errors import AlreadyExists, ConfigError, PermissionDenied

if TYPE_CHECKING:
    from .cluster.launcher import ClusterManager, ManagedCluster
    from .services import Actor, Services


def local_services(manager: "ClusterManager | None" = None) -> "Services":
    """Services for this process: the home's policy (or the default), records and spend in memory."""
    from .security.identity import local_user
    from .security.policy import default_policy, load_policy
    from .services import Services

    path = config.policy_path()
    policy = load_policy(path) if path.exists() else default_policy(local_user())
    return Services(policy, manager=manager, keep_records=False, policy_path=path if path.exists() else None)


class EmbeddedTransport:
    """Every verb of the transport, answered by :class:`Services` in this process for the local user."""

    def __init__(self, services: "Services | None" = None, *, manager: "ClusterManager | None" = None):
        self._services = services
        self._manager = manager
        self._lock = threading.Lock()

    @property
    def services(self) -> "Services":
        with self._lock:
            if self._services is None:
                self._services = local_services(self._manager)
            else:
                self._follow_policy(self._services)
            return self._services

    def _follow_policy(self, services: "Services") -> None:
        """The policy as the home has it now: an edited file, or another ``LEPTON_POLICY``, takes effect
        at the next verb (a file that does not validate is its one-line ConfigError; nothing changes)."""
        from .services.policy_reload import reload_policy, stamp

        path = config.policy_path()
        if not path.exists():
            if services.policy_path is not None:
                from .security.identity import local_user
                from .security.policy import default_policy

                services.policy, services.policy_path, services.policy_stamp = default_policy(local_user()), None, None
            return
        if path != services.policy_path:
            services.policy_path, services.policy_stamp = path, None
        if stamp(path) != services.policy_stamp:
            reload_policy(services, by=self.who.name)

    @property
    def manager(self) -> "ClusterManager":
        return self.services.manager

    @property
    def who(self) -> "Actor":
        from .security.identity import server_owner
        from .services import Actor

        return Actor(server_owner())

    def _team(self, team: str | None, permission: str = "clusters:create") -> str:
        team = team or os.environ.get("LEPTON_TEAM")
        if team:
            return team
        policy, who = self.services.policy, self.who
        mine = [t for t in policy.teams if policy.allows(who.name, who.groups, permission, t)]
        if not mine:
            raise PermissionDenied(f"{who.name} may do {permission} in no team; ask an admin")
        return mine[0]

    # -- clusters ------------------------------------------------------------------------------

    def create(self, profile: str | dict, *, name: str | None,
               overrides: dict[str, Any]) -> tuple[dict, Security | None, bool]:
        overrides = dict(overrides)
        team = self._team(overrides.pop("team", None))
        workers: dict[str, int] = {k: overrides.pop(k) for k in ("cloud", "edge") if k in overrides}
        services, who = self.services, self.who
        try:
            managed = services.create_cluster(who, team=team, profile=profile, name=name, workers=workers or None,
                                              gpus=overrides.pop("gpus", None), threads=overrides.pop("threads", None),
                                              memory=overrides.pop("memory", None))
            reused = False
        except AlreadyExists:
            assert name is not None
            managed, reused = services.cluster(who, name), True
        info = services.describe(managed.info())
        return info, self.security(info["id"]), reused

    def scale(self, cluster_id: str, n: int, site: str) -> dict:
        return self.services.describe(self.services.scale_cluster(self.who, cluster_id, site, n).info())

    def stop(self, cluster_id: str) -> None:
        self.services.stop_cluster(self.who, cluster_id)

    def start_again(self, cluster: str) -> dict:
        managed, redeployed, missed = self.services.start_again(self.who, cluster)
        return {**self.services.describe(managed.info()), "redeployed": redeployed, "not_redeployed": missed}

    def list(self) -> builtins.list[dict]:
        return self.services.visible_clusters(self.who)

    def info(self, cluster_id: str) -> dict:
        return self.services.describe(self.managed(cluster_id).info())

    def managed(self, cluster_id: str) -> "ManagedCluster":
        return self.services.cluster(self.who, cluster_id)

    def security(self, cluster_id: str) -> Security | None:
        cred = self.services.credentials(self.who, cluster_id)
        if not cred.get("tls"):
            return None
        from .security.certs import IssuedCert

        return IssuedCert.from_dict({k: cred[k] for k in
                                     ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")}).security()

    def worker_certificate(self, cluster_id: str, site: str) -> dict:
        return self.services.worker_certificate(self.who, cluster_id, site)

    # -- models --------------------------------------------------------------------------------

    def publish(self, team: str, name: str, payload: Any, meta: dict) -> dict:
        """``payload``: bytes in the model's format, or a ``Serialized`` streamed straight in."""
        manifest = self.services.publish_model(self.who, team, name, payload, meta)
        return json.loads(manifest.to_json())

    def load(self, team: str, ref: str) -> tuple[Any, dict]:
        loaded = self.services.load_model(self.who, team, ref)
        return loaded.model, json.loads(loaded.manifest.to_json())

    def models(self, team: str | None) -> builtins.list[dict]:
        return self.services.models(self.who, team)

    def artifact(self, team: str, ref: str) -> tuple[bytes, str]:
        """The verified artifact of ``ref`` in its framework's format, and its signed manifest (JSON)."""
        import shutil

        manifest, path = self.services.model_artifact(self.who, team, ref)
        try:
            return path.read_bytes(), manifest.to_json()
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    # -- deployments ---------------------------------------------------------------------------

    def deploy(self, cluster_id: str, body: dict[str, Any]) -> dict:
        return self.services.deploy(self.who, cluster_id, **body)

    def deployments(self, cluster_id: str) -> builtins.list[dict]:
        return self.services.deployments(self.who, cluster_id)

    def undeploy(self, cluster_id: str, name: str) -> None:
        self.services.undeploy(self.who, cluster_id, name)

    def predict_deployed(self, cluster_id: str, name: str, inputs: Any) -> dict:
        """Predictions computed on the deployment's site; an interrupt (Kernel → Interrupt) cancels the task."""
        from .cluster.interrupt import stop_job
        from .ml.deployments import predict_label, wait_predict

        future, record, client = self.services.submit_deployed(self.who, cluster_id, name, inputs)
        try:
            return wait_predict(future, record)
        except KeyboardInterrupt:
            raise stop_job(client, predict_label(record), futures=[future]) from None

    # -- studies and privacy ledgers -----------------------------------------------------------

    def study(self, team: str | None, name: str, *, direction: str, sampler: Any = None,
              pruner: Any = None) -> tuple[str, Any]:
        """``(team, study)``: the Optuna study ``name`` of ``team`` (default: ``LEPTON_TEAM``, else the user's one
        team) kept by the services."""
        from .services.studies import RUN

        team = team or os.environ.get("LEPTON_TEAM")
        if not team:
            policy, who = self.services.policy, self.who
            mine = [t for t in policy.teams if policy.allows(who.name, who.groups, RUN, t)]
            if len(mine) != 1:
                raise ConfigError(f"tune: which team keeps the study? pass team= (or --team, or set LEPTON_TEAM)"
                                  f"{'; yours: ' + ', '.join(mine) if mine else ''}")
            team = mine[0]
        return team, self.services.studies().open(self.who, team, name, direction=direction, sampler=sampler,
                                                  pruner=pruner)

    def privacy(self, team: str, dataset: str | None = None) -> dict:
        """``team``'s privacy budget and what was spent of it, per dataset (or of ``dataset`` alone)."""
        return self.services.privacy().overview(self.who, team, dataset)

    def privacy_charge(self, team: str, dataset: str, *, noise_multiplier: float, sample_rate: float, steps: int,
                       what: str, delta: float | None = None) -> dict:
        """Charge one run's mechanism to the ledger of ``team``/``dataset``; PermissionDenied past the budget."""
        return self.services.privacy().charge(self.who, team, dataset, noise_multiplier=noise_multiplier,
                                              sample_rate=sample_rate, steps=steps, what=what, delta=delta)

    def close(self) -> None:
        """Stop this process's clusters and the services' watch."""
        if self._services is not None:
            self._services.close()
