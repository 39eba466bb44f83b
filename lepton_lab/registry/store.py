"""The registry on disk: versioned, team-scoped, encrypted and signed model storage.

Layout::

    <root>/<team>/<model>/index.json                    versions, aliases, tags (a listing)
    <root>/<team>/<model>/alias.log                     signed, hash-chained history (see ledger)
    <root>/<team>/<model>/versions/<n>/manifest.json    canonical JSON, signed
    <root>/<team>/<model>/versions/<n>/manifest.sig     Ed25519 signature
    <root>/<team>/<model>/versions/<n>/artifact.enc     envelope (see security.vault)
    <root>/<team>/.locks/<model>.lock                   flock for index updates
    <root>/<team>/.staging/<random>/                    versions being written

A version is written into ``.staging`` and renamed into ``versions/`` in one
step, then added to the index under the model's lock: readers see a complete
version or none. The registry takes a ``team`` from its caller and trusts it;
permission checks belong to the server, which may hand the registry an
``authorize`` function so that publishing itself refuses a user without
``models:publish`` in the team. What a reader trusts is the alias log: which
versions exist, where aliases point, who published each version and under
which permission; ``index.json`` must agree with it or nothing loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lepton_lab import config
from lepton_lab.errors import ConfigError, IntegrityError, NotFound, PermissionDenied
from lepton_lab.registry import serialize as _serialize
from lepton_lab.registry.formats import check_facts
from lepton_lab.registry.layout import (
    ARTIFACT,
    MANIFEST,
    SIGNATURE,
    ModelIndex,
    VersionEntry,
    fsync_dir,
    sweep_stale,
    write_synced,
)
from lepton_lab.registry.ledger import AliasLog, LogState, manifest_digest
from lepton_lab.registry.manifest import (
    ArtifactInfo,
    InputSchema,
    Lineage,
    Manifest,
    check_alias,
    check_name,
    check_tag,
    parse_ref,
    to_plain_json,
)
from lepton_lab.security.files import locked, write_atomic
from lepton_lab.security.vault import (
    CHUNK_SIZE,
    KeyRing,
    SealedWriter,
    decrypt_bytes,
    decrypt_file,
    sign_manifest,
    verify_manifest,
    verify_stream,
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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


class Registry:
    """Team-scoped model versions under ``root``, encrypted and signed with ``keyring``."""

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
                f"{team}/{name} has no signed alias log: it was not published through this "
                "registry, or its log was removed"
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

    def _write_index(self, index: ModelIndex) -> None:
        model_dir = self._model_dir(index.name, index.team)
        write_atomic(model_dir / "index.json", index.to_bytes())
        fsync_dir(model_dir)

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

    # ------------------------------------------------------------------ publish

    def publish(
        self,
        model_or_path: Any,
        *,
        name: str,
        team: str,
        user: str,
        metrics: dict[str, Any] | None = None,
        input_schema: InputSchema | dict | Any = None,
        lineage: Lineage | dict | None = None,
        compression: dict[str, Any] | None = None,
        description: str = "",
        tags: Iterable[str] = (),
        alias: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        groups: Iterable[str] = (),
    ) -> Manifest:
        """Store a new version of ``name`` for ``team``; returns its signed manifest.

        ``model_or_path`` may also be a :class:`Serialized` made elsewhere (a kernel
        that serialised its model and sent the bytes to the server).

        The model is written in its framework's own format, encrypted with a
        fresh data key wrapped by the team key, and signed by ``user``. The
        version number is the next free one; on any error nothing is left
        behind. ``init_kwargs`` rebuilds a PyTorch module whose class does not
        record its constructor arguments. With ``authorize`` set, ``user`` (in
        ``groups``) must hold ``models:publish`` in ``team``; the alias log
        records that they did.
        """
        team_dir = self._team_dir(team)
        check_name(name)
        if self.authorize is not None and not self.authorize(user, tuple(groups), "models:publish", team):
            raise PermissionDenied(f"{user} may not publish models to {team}")
        if alias is not None:
            check_alias(alias)
        tags = [check_tag(t) for t in ([tags] if isinstance(tags, str) else tags)]
        metrics = to_plain_json(dict(metrics or {}), "metrics")
        compression = (
            None if compression is None else to_plain_json(dict(compression), "compression")
        )
        schema = InputSchema.coerce(input_schema)
        origin = Lineage.coerce(lineage)
        if not isinstance(description, str):
            raise ConfigError("description must be a string")
        self.keyring.signing_key(user)  # refuse a bad user name before any work
        ser = (model_or_path if isinstance(model_or_path, _serialize.Serialized)
               else _serialize.serialize(model_or_path, init_kwargs=init_kwargs))
        check_facts(ser.framework, ser.format, ser.construction)

        sweep_stale(team_dir / ".staging")
        staging = team_dir / ".staging" / secrets.token_hex(8)
        staging.mkdir(parents=True, mode=0o700)
        try:
            with open(staging / ARTIFACT, "xb") as out:
                writer = SealedWriter(out, team, self.keyring, chunk_size=self.chunk_size)
                try:
                    ser.write(writer)
                except BaseException:
                    writer.abort()
                    raise
                header, digest = writer.close()
                out.flush()
                os.fsync(out.fileno())
            artifact = ArtifactInfo(
                size=digest.size,
                sha256=digest.sha256,
                ciphertext_size=digest.stored_size,
                envelope=header,
            )
            draft = Manifest(
                name=name,
                team=team,
                version=0,  # numbered under the lock
                framework=ser.framework,
                framework_version=ser.framework_version,
                format=ser.format,
                artifact=artifact,
                signer=user,
                lineage=dataclasses.replace(origin, user=user),
                input_schema=schema,
                metrics=metrics,
                compression=compression,
                construction=ser.construction,
                description=description,
                tags=tags,
            )
            with self._lock(name, team):
                return self._commit(staging, draft, alias)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, staging: Path, draft: Manifest, alias: str | None) -> Manifest:
        """Number, sign and move a staged version into place; runs under the model lock."""
        name, team, user = draft.name, draft.team, draft.signer
        model_dir = self._model_dir(name, team)
        versions_dir = model_dir / "versions"
        log = self._log(name, team)
        before = log.read()
        index = self._read_index(name, team) or ModelIndex(name=name, team=team)
        if index.versions and not before.seq:
            raise IntegrityError(f"{team}/{name} has no signed alias log; it was not published "
                                 "through this registry, or its log was removed")
        on_disk = (
            [int(p.name) for p in versions_dir.iterdir() if p.name.isdigit()]
            if versions_dir.is_dir()
            else []
        )
        # A directory left by a crash between rename and index update keeps its number.
        version = max([before.last_version, index.last_version, *on_disk]) + 1
        manifest = dataclasses.replace(
            draft, version=version, lineage=dataclasses.replace(draft.lineage, created=_now())
        )
        data = manifest.to_bytes()
        write_synced(staging / MANIFEST, data)
        write_synced(staging / SIGNATURE, sign_manifest(data, user, self.keyring))
        fsync_dir(staging)

        versions_dir.mkdir(parents=True, exist_ok=True)
        final = versions_dir / str(version)
        os.rename(staging, final)
        state = before
        try:
            fsync_dir(versions_dir)
            index = self._sync(index, before)
            state = log.append(state, "publish", version=version, manifest_sha256=manifest_digest(data),
                               signer=user, permission="models:publish",
                               granted="policy" if self.authorize is not None else "caller")
            if alias is not None:
                state = log.append(state, "alias", alias=alias, version=version, by=user)
            index.versions.append(
                VersionEntry(
                    version=version,
                    created=manifest.lineage.created,
                    signer=user,
                    framework=manifest.framework,
                    format=manifest.format,
                    size=manifest.artifact.size,
                    sha256=manifest.artifact.sha256,
                    tags=list(manifest.tags),
                )
            )
            index.last_version = version
            index.aliases = dict(state.aliases)
            self._write_index(index)
        except BaseException:
            # Not in the index yet: take the version back out before anyone relies on it.
            log.undo(before)
            os.rename(final, staging)
            raise
        return manifest

    # ------------------------------------------------------------------ read

    def _verified_manifest(self, name: str, team: str, version: int, state: LogState) -> Manifest:
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
        verify_manifest(data, signature, signer, self.keyring)
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
        published = state.versions.get(version)
        if published is None or published.manifest_sha256 != manifest_digest(data) or (
            published.signer != signer or published.permission != "models:publish"
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

    # ------------------------------------------------------------------ change

    def _change(self, name: str, team: str, index: ModelIndex, before: LogState,
                events: list[tuple[str, dict[str, Any]]]) -> None:
        """Append ``events`` to the log and write the index they give; all or nothing."""
        log, state = self._log(name, team), before
        try:
            for event, fields in events:
                state = log.append(state, event, **fields)
            self._write_index(self._sync(index, state))
        except BaseException:
            log.undo(before)
            raise

    def set_alias(self, name: str, team: str, alias: str, version: int, *, user: str = "") -> None:
        """Point ``alias`` (e.g. ``production``) at an existing version; signed into the alias log."""
        check_name(name)
        check_alias(alias)
        with self._lock(name, team):
            index, state = self._checked(name, team)
            target = self._resolve(index, version, None)
            self._change(name, team, index, state, [("alias", {"alias": alias, "version": target, "by": user})])

    def remove_alias(self, name: str, team: str, alias: str, *, user: str = "") -> None:
        """Drop ``alias``; NotFound if the model has no such alias."""
        check_name(name)
        with self._lock(name, team):
            index, state = self._checked(name, team)
            self._resolve(index, None, alias)
            self._change(name, team, index, state, [("unalias", {"alias": alias, "by": user})])

    def tag(
        self, name: str, team: str, version: int, *tags: str, remove: bool = False
    ) -> list[str]:
        """Add (or with ``remove=True`` drop) tags on a version; returns its tags now.

        These index tags are mutable labels; the tags given at publish time
        are also kept, signed, in the manifest.
        """
        check_name(name)
        tags = tuple(check_tag(t) for t in tags)
        with self._lock(name, team):
            index = self._index(name, team)
            entry = index.entry(self._resolve(index, version, None))
            assert entry is not None  # _resolve found it
            if remove:
                entry.tags = [t for t in entry.tags if t not in tags]
            else:
                entry.tags = sorted(set(entry.tags) | set(tags))
            self._write_index(index)
            return list(entry.tags)

    def delete_version(
        self, name: str, team: str, version: int, *, force: bool = False, user: str = ""
    ) -> None:
        """Remove a version at once; refused while an alias points to it unless ``force``."""
        check_name(name)
        with self._lock(name, team):
            index, state = self._checked(name, team)
            version = self._resolve(index, version, None)
            pointing = sorted(a for a, v in index.aliases.items() if v == version)
            if pointing and not force:
                raise ConfigError(
                    f"{name}@{version} is aliased as {', '.join(pointing)}; move the alias "
                    "or delete with force=True"
                )
            vdir = self._version_dir(name, team, version)
            trash = self._team_dir(team) / ".staging" / f"deleted-{secrets.token_hex(8)}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            if vdir.exists():
                os.rename(vdir, trash)
                fsync_dir(vdir.parent)
            try:
                self._change(name, team, index, state, [("delete", {"version": version, "by": user})])
            except BaseException:
                if trash.exists():
                    os.rename(trash, vdir)
                raise
        shutil.rmtree(trash, ignore_errors=True)


__all__ = ["LoadedModel", "ModelIndex", "ModelSummary", "Registry", "VersionEntry"]
