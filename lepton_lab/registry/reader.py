"""Reading the registry: paths, the index checked against the signed alias log, verified versions.

:class:`RegistryReader` is everything :class:`~lepton_lab.registry.store.Registry`
does that writes nothing: list models, versions and aliases, and hand out
manifests and artifacts only after their signatures, the alias log and both
digests verified. See :mod:`lepton_lab.registry.store` for the layout.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_lab import config
from lepton_lab.errors import ConfigError, IntegrityError, NotFound
from lepton_lab.registry import serialize as _serialize
from lepton_lab.registry.layout import MANIFEST, SIGNATURE, ModelIndex, VersionEntry
from lepton_lab.registry.ledger import AliasLog, LogState, manifest_digest
from lepton_lab.registry.manifest import Manifest, check_alias, check_name, parse_ref
from lepton_lab.security.files import locked
from lepton_lab.security.signing import Signers
from lepton_lab.security.vault import (
    CHUNK_SIZE,
    KeyRing,
    decrypt_bytes,
    decrypt_file,
    verify_manifest,
    verify_stream,
)


def migrate_hint(team: str) -> str:
    """The command that gives a model written before alias logs its log."""
    return f"an admin runs `lepton-lab registry migrate --team {team}`"


@dataclass
class ModelSummary:
    """A model as listed by ``Registry.models``."""

    name: str
    team: str
    latest_version: int
    versions: int
    framework: str
    updated: str
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A verified, deserialised model and the manifest it was published with."""

    model: Any
    manifest: Manifest


class RegistryReader:
    """Team-scoped model versions under ``root``, verified with ``keyring`` before anything is read."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        keyring: KeyRing | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        authorize: Callable[[str, tuple[str, ...], str, str], bool] | None = None,
    ):
        self.root = Path(root) if root is not None else config.registry_path()
        self.keyring = keyring if keyring is not None else KeyRing()
        self.chunk_size = chunk_size
        #: ``authorize(user, groups, permission, team)``: the policy, when the caller has one.
        self.authorize = authorize

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ------------------------------------------------------------------ paths

    def _team_dir(self, team: str) -> Path:
        return self.root / check_name(team, "team name")

    def _model_dir(self, name: str, team: str) -> Path:
        return self._team_dir(team) / check_name(name)

    def _version_dir(self, name: str, team: str, version: int) -> Path:
        return self._model_dir(name, team) / "versions" / str(version)

    @contextmanager
    def _lock(self, name: str, team: str) -> Iterator[None]:
        # The lock lives outside the model directory, so a failed first publish
        # leaves no model directory behind.
        with locked(self._team_dir(team) / ".locks" / check_name(name)):
            yield

    def _read_index(self, name: str, team: str) -> ModelIndex | None:
        path = self._model_dir(name, team) / "index.json"
        try:
            return ModelIndex.from_bytes(path.read_bytes(), path)
        except FileNotFoundError:
            return None

    def _log(self, name: str, team: str) -> AliasLog:
        return AliasLog(self._model_dir(name, team), self.keyring.root, self.root, team, name)

    def _checked(self, name: str, team: str) -> tuple[ModelIndex, LogState]:
        """The index and the verified log of a model, which must agree; NotFound if it has no versions."""
        index = self._read_index(name, team)
        state = self._log(name, team).read()
        if index is None and not state.seq:
            raise NotFound(f"no model {name!r} in team {team}")
        if not state.seq:
            raise IntegrityError(
                f"{team}/{name} has no signed alias log: it was written before alias logs, or not "
                f"through this registry; {migrate_hint(team)}"
            )
        if (
            index is None
            or sorted(e.version for e in index.versions) != sorted(state.versions)
            or index.aliases != state.aliases
            or index.last_version != state.last_version
        ):
            raise IntegrityError(
                f"index.json of {team}/{name} disagrees with its signed alias log (versions "
                f"{sorted(state.versions)}, aliases {state.aliases}); it was edited"
            )
        if not index.versions:
            raise NotFound(f"no model {name!r} in team {team}")
        return index, state

    def _index(self, name: str, team: str) -> ModelIndex:
        return self._checked(name, team)[0]

    def _sync(self, index: ModelIndex, state: LogState) -> ModelIndex:
        """``index`` brought in line with the log (after a crash between the two writes)."""
        known = {e.version: e for e in index.versions}
        index.versions = [known.get(v) or self._entry_of(index.name, index.team, v, state)
                          for v in sorted(state.versions)]
        index.aliases = dict(state.aliases)
        index.last_version = state.last_version
        return index

    def _entry_of(self, name: str, team: str, version: int, state: LogState) -> VersionEntry:
        m = self._verified_manifest(name, team, version, state)
        return VersionEntry(version=version, created=m.lineage.created, signer=m.signer,
                            framework=m.framework, format=m.format, size=m.artifact.size,
                            sha256=m.artifact.sha256, tags=list(m.tags))

    @staticmethod
    def _resolve(index: ModelIndex, version: int | None, alias: str | None) -> int:
        if version is not None and alias is not None:
            raise ConfigError("give a version or an alias, not both")
        if alias is not None:
            if check_alias(alias) not in index.aliases:
                raise NotFound(f"model {index.name!r} has no alias {alias!r}")
            return index.aliases[alias]
        if version is not None:
            if (
                isinstance(version, bool)
                or not isinstance(version, int)
                or index.entry(version) is None
            ):
                raise NotFound(f"model {index.name!r} has no version {version!r}")
            return version
        return max(e.version for e in index.versions)

    def _ref(
        self, name: str, version: int | None, alias: str | None
    ) -> tuple[str, int | None, str | None]:
        if isinstance(name, str) and "@" in name:
            base, ref_version, ref_alias = parse_ref(name)
            if (ref_version is not None or ref_alias is not None) and (
                version is not None or alias is not None
            ):
                raise ConfigError(f"{name!r} already names a version or alias; do not pass another")
            return base, ref_version if ref_version is not None else version, ref_alias or alias
        return check_name(name), version, alias

    # ------------------------------------------------------------------ read

    def _signed_manifest(self, name: str, team: str, version: int, signers: Signers) -> tuple[Manifest, bytes]:
        """A version's manifest and its exact bytes, once its signature verified against ``signers``
        and it names this model, team and version."""
        vdir = self._version_dir(name, team, version)
        try:
            data = (vdir / MANIFEST).read_bytes()
            signature = (vdir / SIGNATURE).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"{name}@{version} of team {team} is missing its manifest or signature"
            ) from None
        try:
            signer = json.loads(data.decode("utf-8"))["signer"]
            if not isinstance(signer, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"the manifest of {name}@{version} is unreadable; it was changed"
            ) from None
        verify_manifest(data, signature, signer, signers)
        manifest = Manifest.from_json(data)
        if (manifest.name, manifest.team, manifest.version, manifest.signer) != (
            name,
            team,
            version,
            signer,
        ):
            raise IntegrityError(
                f"the manifest stored as {name}@{version} of team {team} describes another "
                "model, version, team or signer; it was moved or copied"
            )
        return manifest, data

    def _verified_manifest(self, name: str, team: str, version: int, state: LogState) -> Manifest:
        manifest, data = self._signed_manifest(name, team, version, self.keyring)
        published = state.versions.get(version)
        if published is None or published.manifest_sha256 != manifest_digest(data) or (
            published.signer != manifest.signer or published.permission != "models:publish"
        ):
            raise IntegrityError(
                f"the manifest of {name}@{version} of team {team} is not the one the alias log "
                "records as published with models:publish; it was replaced or re-signed"
            )
        return manifest

    def _artifact(self, manifest: Manifest) -> Path:
        path = (
            self._version_dir(manifest.name, manifest.team, manifest.version)
            / manifest.artifact.filename
        )
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"the artifact of {manifest.ref} is missing") from None
        if size != manifest.artifact.ciphertext_size:
            raise IntegrityError(
                f"the artifact of {manifest.ref} has {size} bytes, not the signed "
                f"{manifest.artifact.ciphertext_size}; it was truncated or extended"
            )
        return path

    def manifest(
        self, name: str, team: str, version: int | None = None, *, alias: str | None = None
    ) -> Manifest:
        """The signature-checked manifest of a version (the latest by default)."""
        name, version, alias = self._ref(name, version, alias)
        index, state = self._checked(name, team)
        return self._verified_manifest(name, team, self._resolve(index, version, alias), state)

    def load(
        self, name: str, *, team: str, version: int | None = None, alias: str | None = None
    ) -> LoadedModel:
        """The model and its manifest, after the signature, every tag and the digests verified.

        ``name`` may carry the version or alias: ``"fraud@3"``, ``"fraud@production"``.
        Nothing is deserialised unless the whole artifact verified; any
        changed byte raises IntegrityError. A ``bytes`` artifact comes back as
        a ``bytearray``.
        """
        manifest = self.manifest(name, team, version, alias=alias)
        payload = decrypt_bytes(
            self._artifact(manifest),
            self.keyring,
            team,
            expected_header=manifest.artifact.envelope,
            expected=manifest.artifact.digest(),
        )
        return LoadedModel(model=_serialize.deserialize(payload, manifest), manifest=manifest)

    def verify(
        self, name: str, team: str, version: int | None = None, *, alias: str | None = None
    ) -> Manifest:
        """Check a version end to end (signature, tags, both digests) without loading it."""
        manifest = self.manifest(name, team, version, alias=alias)
        with open(self._artifact(manifest), "rb") as src:
            verify_stream(
                src,
                self.keyring,
                team,
                expected_header=manifest.artifact.envelope,
                expected=manifest.artifact.digest(),
            )
        return manifest

    def download(
        self,
        name: str,
        team: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        dest: str | os.PathLike | None = None,
    ) -> Path:
        """Decrypt a verified version's artifact to a file (0600) and return its path.

        ``dest`` may be a file path or an existing directory; by default a new
        private temporary directory. The bytes are the framework's own format.
        """
        manifest = self.manifest(name, team, version, alias=alias)
        source = self._artifact(manifest)
        suffix = {"ubj": ".ubj", "state_dict": ".pt"}.get(manifest.format, ".bin")
        filename = f"{manifest.name}-v{manifest.version}{suffix}"
        if dest is None:
            target = Path(tempfile.mkdtemp(prefix="lepton-download-")) / filename
        else:
            target = Path(dest)
            if target.is_dir():
                target = target / filename
        decrypt_file(
            source,
            target,
            self.keyring,
            team,
            expected_header=manifest.artifact.envelope,
            expected=manifest.artifact.digest(),
        )
        return target

    def models(self, team: str) -> list[ModelSummary]:
        """The team's models with at least one version, by name."""
        team_dir = self._team_dir(team)
        if not team_dir.is_dir():
            return []
        summaries = []
        for child in sorted(team_dir.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            try:
                index = self._index(child.name, team)
            except NotFound:
                continue
            latest = index.latest()
            if latest is None:
                continue
            summaries.append(
                ModelSummary(
                    name=index.name,
                    team=team,
                    latest_version=latest.version,
                    versions=len(index.versions),
                    framework=latest.framework,
                    updated=latest.created,
                    aliases=dict(index.aliases),
                )
            )
        return summaries

    def versions(self, name: str, team: str) -> list[VersionEntry]:
        """Every version of a model, oldest first."""
        return sorted(self._index(check_name(name), team).versions, key=lambda e: e.version)

    def aliases(self, name: str, team: str) -> dict[str, int]:
        """Alias → version for a model."""
        return dict(self._index(check_name(name), team).aliases)


__all__ = ["LoadedModel", "ModelSummary", "RegistryReader", "migrate_hint"]
