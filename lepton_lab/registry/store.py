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
import os
import secrets
import shutil
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lepton_lab.errors import ConfigError, IntegrityError, PermissionDenied
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
from lepton_lab.registry.ledger import LogState, manifest_digest
from lepton_lab.registry.manifest import (
    ArtifactInfo,
    InputSchema,
    Lineage,
    Manifest,
    check_alias,
    check_name,
    check_tag,
    to_plain_json,
)
from lepton_lab.registry.reader import LoadedModel, ModelSummary, RegistryReader, migrate_hint
from lepton_lab.security.files import write_atomic
from lepton_lab.security.vault import SealedWriter, sign_manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")



class Registry(RegistryReader):
    """Team-scoped model versions under ``root``, encrypted and signed with ``keyring``.

    Reading is :class:`~lepton_lab.registry.reader.RegistryReader`'s; this adds
    publishing and every change, each signed into the model's alias log.
    """

    def _write_index(self, index: ModelIndex) -> None:
        model_dir = self._model_dir(index.name, index.team)
        write_atomic(model_dir / "index.json", index.to_bytes())
        fsync_dir(model_dir)

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
            raise IntegrityError(f"{team}/{name} has no signed alias log; {migrate_hint(team)}")
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
