"""Models, studies and privacy ledgers for a known user: a team's models exist only for its readers."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import config
from ..errors import ConfigError, IntegrityError, LeptonError, NotFound, first_line
from .base import Actor, ServicesBase


class ModelServices(ServicesBase):
    """The model verbs of :class:`~lepton_lab.services.Services`."""

    def studies(self):
        """The teams' hyper-parameter studies, under this policy (:mod:`lepton_lab.services.studies`)."""
        from .studies import StudyStore

        return StudyStore(self.policy, home=self.home, audit=self.audit)

    def privacy(self):
        """The teams' privacy ledgers: DP spending per dataset against the policy's budgets."""
        from .privacy import PrivacyLedger

        return PrivacyLedger(self.policy, home=self.home, audit=self.audit)

    @property
    def registry(self):
        if getattr(self, "_registry", None) is None:
            from ..registry import Registry
            from ..security.keys import KeyRing

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
        from ..registry import parse_ref

        name, version, alias = parse_ref(ref)
        self._model_team(who, team, "models:read", name)
        return self.registry.manifest(name, team, version, alias=alias)

    def model_artifact(self, who: Actor, team: str, ref: str):
        """(manifest, path of the verified, decrypted artifact) — the caller deletes the file."""
        manifest = self.model_manifest(who, team, ref)
        path = self.registry.download(manifest.name, team, manifest.version)
        self.audit.record(who.name, "models:read", f"models:{team}/{manifest.name}@{manifest.version}", "allow")
        return manifest, path

    def load_model(self, who: Actor, team: str, ref: str):
        """The verified model ``ref`` of ``team``, built in this process (``Registry.load``'s result)."""
        from ..registry import parse_ref

        name, _, _ = parse_ref(ref)
        self._model_team(who, team, "models:read", name)
        loaded = self.registry.load(ref, team=team)
        self.audit.record(who.name, "models:read",
                          f"models:{team}/{loaded.manifest.name}@{loaded.manifest.version}", "allow")
        return loaded

    def publish_model(self, who: Actor, team: str, name: str, payload: Any, meta: dict[str, Any]):
        """Publish ``payload`` (the model's bytes, or a ``Serialized`` streamed straight in) as ``name``."""
        from ..registry.serialize import Serialized, from_payload

        self._model_team(who, team, "models:publish", name)
        allowed = {"framework", "framework_version", "format", "construction", "metrics", "input_schema",
                   "lineage", "compression", "description", "tags", "alias"}
        unknown = sorted(set(meta) - allowed)
        if unknown:
            raise ConfigError(f"unknown manifest field {unknown[0]!r}")
        ser = payload if isinstance(payload, Serialized) else from_payload(
            payload, framework=str(meta.get("framework", "")), framework_version=str(meta.get("framework_version", "")),
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

    def migrate_registry(self, who: Actor, team: str | None = None) -> list[dict[str, Any]]:
        """Give models published before alias logs their signed log (``policy:admin`` in each team).

        Every version is verified first; on any failure nothing is written and the
        refusal is audited. Models that have a log are left alone.
        """
        from ..registry.migrate import migrate

        if team is not None and team not in self.policy.teams:
            raise NotFound(f"no team {team!r} in {self.policy.source}")
        teams = [team] if team is not None else list(self.policy.teams)
        for t in teams:
            self.require(who, "policy:admin", t, resource=f"models:{t}")
        try:
            done = migrate(self.registry, teams, by=who.name)
        except LeptonError as e:
            self.audit.record(who.name, "policy:admin", f"models:{','.join(teams)}", "deny",
                              reason=f"registry migration refused: {e}")
            raise
        for m in done:
            self.audit.record(who.name, "policy:admin", f"models:{m.team}/{m.name}", "allow",
                              event="registry-migrate", versions=m.versions, aliases=m.aliases)
        return [dataclasses.asdict(m) for m in done]

    def predict(self, who: Actor, team: str, ref: str, inputs: Any) -> dict[str, Any]:
        from ..ml.serve import predict_with

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
            raise ConfigError(f"inputs do not fit {manifest.name} v{manifest.version}: {first_line(e)}") from None


def _check_input_rank(inputs: Any, manifest: Any) -> None:
    check_input_rank(inputs, manifest.framework, getattr(manifest, "input_schema", None), manifest.name)


def check_input_rank(inputs: Any, framework: str, schema: Any, name: str) -> None:
    """Rows of features for a model of 2-D input (its schema says so, or it is XGBoost)."""
    import numpy as np

    shape = schema.get("shape") if isinstance(schema, dict) else getattr(schema, "shape", None)
    two_d = (isinstance(shape, (list, tuple)) and len(shape) == 2) or framework == "xgboost"
    try:
        rank = np.ndim(inputs)
    except ValueError:
        raise ConfigError("inputs must be a rectangular list of rows of numbers") from None
    if two_d and rank not in (1, 2):
        raise ConfigError(f"inputs have {rank} dimensions; {name} takes rows of features (2-D)")
