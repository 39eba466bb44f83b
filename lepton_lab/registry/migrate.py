"""Registries written before alias logs: every version verified, then each model's signed log written.

A model published before alias logs has ``index.json`` and its versions but no
``alias.log``, and is refused on load. :func:`migrate` checks every version of
every such model first (its manifest's signature, that the manifest names this
model, team and version, the artifact's size and its plaintext SHA-256 through
the envelope); if any check fails it raises that one-line error and writes
nothing. Then, model by model under its lock, it certifies the signers' keys the
services hold, and appends to a new log a ``publish`` entry per version, an
``alias`` entry per alias of ``index.json`` and a closing ``migrate`` entry, all
signed by the registry root key. A model that already has a log is left alone, so
running it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lepton_lab.errors import IntegrityError
from lepton_lab.registry.layout import ModelIndex
from lepton_lab.registry.ledger import manifest_digest
from lepton_lab.registry.manifest import check_alias
from lepton_lab.registry.store import Registry
from lepton_lab.security.vault import KeyRing, verify_stream


@dataclass
class Migrated:
    """One model given its alias log: the versions and aliases it records."""

    team: str
    name: str
    versions: list[int] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    signers: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    migrated: Migrated
    index_bytes: bytes
    last_version: int
    published: dict[int, tuple[str, str]]  # version -> (manifest SHA-256, signer)


class _HeldKeys:
    """Signature checks with the keys users signed with before public keys were certified."""

    def __init__(self, keyring: KeyRing):
        self.keyring = keyring

    def public_key(self, user: str) -> Ed25519PublicKey:
        return self.keyring.held_public_key(user)

    def signing_key(self, user: str) -> Ed25519PrivateKey:
        raise IntegrityError("a migration signs nothing with users' keys")


def unlogged_models(registry: Registry, team: str) -> list[str]:
    """Models of ``team`` that have an ``index.json`` but no alias log, by name."""
    team_dir = registry._team_dir(team)
    if not team_dir.is_dir():
        return []
    return sorted(child.name for child in team_dir.iterdir()
                  if child.is_dir() and not child.name.startswith(".")
                  and (child / "index.json").exists() and not (child / "alias.log").exists())


def _plan(registry: Registry, team: str, name: str) -> _Plan | None:
    """Verify one model written before alias logs; None if it already has a log."""
    if registry._log(name, team).read().seq:  # a cut or removed log is refused here, never rewritten
        return None
    index_path = registry._model_dir(name, team) / "index.json"
    index_bytes = index_path.read_bytes()
    index = ModelIndex.from_bytes(index_bytes, index_path)
    if (index.name, index.team) != (name, team):
        raise IntegrityError(f"{index_path} describes {index.team}/{index.name}; it was moved or copied")
    keys = _HeldKeys(registry.keyring)
    done = Migrated(team=team, name=name)
    published: dict[int, tuple[str, str]] = {}
    for entry in sorted(index.versions, key=lambda e: e.version):
        manifest, data = registry._signed_manifest(name, team, entry.version, keys)
        with open(registry._artifact(manifest), "rb") as src:
            verify_stream(src, registry.keyring, team, expected_header=manifest.artifact.envelope,
                          expected=manifest.artifact.digest())
        published[entry.version] = (manifest_digest(data), manifest.signer)
        done.versions.append(entry.version)
        if manifest.signer not in done.signers:
            done.signers.append(manifest.signer)
    for alias, version in sorted(index.aliases.items()):
        check_alias(alias)
        if version not in published:
            raise IntegrityError(f"alias {alias!r} of {team}/{name} points to version {version!r}, which it "
                                 "does not hold; fix index.json from a backup")
        done.aliases[alias] = version
    last = max([index.last_version, *done.versions])
    return _Plan(done, index_bytes, last, published)


def _write(registry: Registry, plan: _Plan, by: str) -> None:
    team, name = plan.migrated.team, plan.migrated.name
    with registry._lock(name, team):
        log = registry._log(name, team)
        before = log.read()
        index_path = registry._model_dir(name, team) / "index.json"
        if before.seq or index_path.read_bytes() != plan.index_bytes:
            raise IntegrityError(f"{team}/{name} changed while it was being migrated; run the migration again")
        for signer in plan.migrated.signers:
            registry.keyring.signing_key(signer)  # certifies the key checked above; creates none
        state = before
        try:
            for version in plan.migrated.versions:
                digest, signer = plan.published[version]
                state = log.append(state, "publish", version=version, manifest_sha256=digest, signer=signer,
                                   permission="models:publish", granted="migration", by=by)
            for alias, version in plan.migrated.aliases.items():
                state = log.append(state, "alias", alias=alias, version=version, by=by)
            state = log.append(state, "migrate", last_version=plan.last_version, by=by)
            index = ModelIndex.from_bytes(plan.index_bytes, index_path)
            registry._write_index(registry._sync(index, state))
        except BaseException:
            log.undo(before)
            raise


def migrate(registry: Registry, teams: Iterable[str], *, by: str) -> list[Migrated]:
    """Give every model of ``teams`` written before alias logs its signed log; returns what was migrated.

    Every version of every such model is verified before anything is written; the
    first failure raises its one-line error and nothing changes.
    """
    plans = [p for team in teams for name in unlogged_models(registry, team)
             if (p := _plan(registry, team, name)) is not None]
    for plan in plans:
        _write(registry, plan, by)
    return [p.migrated for p in plans]


__all__ = ["Migrated", "migrate", "unlogged_models"]
