"""The registry on disk: versioned, team-scoped, encrypted and signed model storage.

Layout::

    <root>/<team>/<model>/index.json                    versions, aliases, tags
    <root>/<team>/<model>/versions/<n>/manifest.json    canonical JSON, signed
    <root>/<team>/<model>/versions/<n>/manifest.sig     Ed25519 signature
    <root>/<team>/<model>/versions/<n>/artifact.enc     envelope (see security.vault)
    <root>/<team>/.locks/<model>.lock                   flock for index updates
    <root>/<team>/.staging/<random>/                    versions being written

A version is written into ``.staging`` and renamed into ``versions/`` in one
step, then added to the index under the model's lock: readers see a complete
version or none. The registry takes a ``team`` from its caller and trusts it;
permission checks belong to the server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lepton_lab import config
from lepton_lab.errors import ConfigError, IntegrityError, NotFound
from lepton_lab.registry import serialize as _serialize
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
    canonical_json,
    decrypt_bytes,
    decrypt_file,
    sign_manifest,
    verify_manifest,
    verify_stream,
)

INDEX_FORMAT = "lepton-index/1"
#: Seconds after which a staging directory is a crash leftover (no live publish takes a day).
STALE_STAGING = 24 * 3600
ARTIFACT = "artifact.enc"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sweep_stale(staging_root: Path) -> None:
    """Remove what publishes killed long ago left in the staging area (never visible)."""
    try:
        entries = list(staging_root.iterdir())
    except FileNotFoundError:
        return
    cutoff = time.time() - STALE_STAGING
    for entry in entries:
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            pass


@dataclass
class VersionEntry:
    """One version as listed in ``index.json``."""

    version: int
    created: str
    signer: str
    framework: str
    format: str
    size: int
    sha256: str
    tags: list[str] = field(default_factory=list)


@dataclass
class ModelIndex:
    """The shape of ``index.json``: a model's versions, aliases and tags."""

    name: str
    team: str
    versions: list[VersionEntry] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    last_version: int = 0  # never reused, even after the newest version is deleted
    format: str = INDEX_FORMAT

    @classmethod
    def from_bytes(cls, data: bytes, where: Path) -> ModelIndex:
        try:
            raw = json.loads(data)
            raw["versions"] = [VersionEntry(**v) for v in raw["versions"]]
            index = cls(**raw)
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{where} is damaged; restore it from a backup") from None
        if index.format != INDEX_FORMAT:
            raise ConfigError(f"{where} has format {index.format!r}; upgrade Lepton Lab")
        return index

    def to_bytes(self) -> bytes:
        return canonical_json(dataclasses.asdict(self))

    def entry(self, version: int) -> VersionEntry | None:
        return next((e for e in self.versions if e.version == version), None)

    def latest(self) -> VersionEntry | None:
        return max(self.versions, key=lambda e: e.version, default=None)


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
    ):
        self.root = Path(root) if root is not None else config.registry_path()
        self.keyring = keyring if keyring is not None else KeyRing()
        self.chunk_size = chunk_size

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

    def _index(self, name: str, team: str) -> ModelIndex:
        index = self._read_index(name, team)
        if index is None or not index.versions:
            raise NotFound(f"no model {name!r} in team {team}")
        return index

    def _write_index(self, index: ModelIndex) -> None:
        model_dir = self._model_dir(index.name, index.team)
        write_atomic(model_dir / "index.json", index.to_bytes())
        _fsync_dir(model_dir)

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
    ) -> Manifest:
        """Store a new version of ``name`` for ``team``; returns its signed manifest.

        ``model_or_path`` may also be a :class:`Serialized` made elsewhere (a kernel
        that serialised its model and sent the bytes to the server).

        The model is written in its framework's own format, encrypted with a
        fresh data key wrapped by the team key, and signed by ``user``. The
        version number is the next free one; on any error nothing is left
        behind. ``init_kwargs`` rebuilds a PyTorch module whose class does not
        record its constructor arguments.
        """
        team_dir = self._team_dir(team)
        check_name(name)
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

        _sweep_stale(team_dir / ".staging")
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
        index = self._read_index(name, team) or ModelIndex(name=name, team=team)
        on_disk = (
            [int(p.name) for p in versions_dir.iterdir() if p.name.isdigit()]
            if versions_dir.is_dir()
            else []
        )
        # A directory left by a crash between rename and index update keeps its number.
        version = max([index.last_version, *on_disk]) + 1
        manifest = dataclasses.replace(
            draft, version=version, lineage=dataclasses.replace(draft.lineage, created=_now())
        )
        data = manifest.to_bytes()
        _write_synced(staging / MANIFEST, data)
        _write_synced(staging / SIGNATURE, sign_manifest(data, user, self.keyring))
        _fsync_dir(staging)

        versions_dir.mkdir(parents=True, exist_ok=True)
        final = versions_dir / str(version)
        os.rename(staging, final)
        try:
            _fsync_dir(versions_dir)
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
            if alias is not None:
                index.aliases[alias] = version
            self._write_index(index)
        except BaseException:
            # Not in the index yet: take the version back out before anyone relies on it.
            os.rename(final, staging)
            raise
        return manifest

    # ------------------------------------------------------------------ read

    def _verified_manifest(self, name: str, team: str, version: int) -> Manifest:
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
        index = self._index(name, team)
        return self._verified_manifest(name, team, self._resolve(index, version, alias))

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
            index = self._read_index(child.name, team)
            latest = index.latest() if index else None
            if index is None or latest is None:
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

    def set_alias(self, name: str, team: str, alias: str, version: int) -> None:
        """Point ``alias`` (e.g. ``production``) at an existing version."""
        check_name(name)
        check_alias(alias)
        with self._lock(name, team):
            index = self._index(name, team)
            index.aliases[alias] = self._resolve(index, version, None)
            self._write_index(index)

    def remove_alias(self, name: str, team: str, alias: str) -> None:
        """Drop ``alias``; NotFound if the model has no such alias."""
        check_name(name)
        with self._lock(name, team):
            index = self._index(name, team)
            self._resolve(index, None, alias)
            del index.aliases[alias]
            self._write_index(index)

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

    def delete_version(self, name: str, team: str, version: int, *, force: bool = False) -> None:
        """Remove a version at once; refused while an alias points to it unless ``force``."""
        check_name(name)
        with self._lock(name, team):
            index = self._index(name, team)
            version = self._resolve(index, version, None)
            pointing = sorted(a for a, v in index.aliases.items() if v == version)
            if pointing and not force:
                raise ConfigError(
                    f"{name}@{version} is aliased as {', '.join(pointing)}; move the alias "
                    "or delete with force=True"
                )
            for alias in pointing:
                del index.aliases[alias]
            index.versions = [e for e in index.versions if e.version != version]
            vdir = self._version_dir(name, team, version)
            trash = self._team_dir(team) / ".staging" / f"deleted-{secrets.token_hex(8)}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            if vdir.exists():
                os.rename(vdir, trash)
                _fsync_dir(vdir.parent)
            try:
                self._write_index(index)
            except BaseException:
                if trash.exists():
                    os.rename(trash, vdir)
                raise
        shutil.rmtree(trash, ignore_errors=True)


__all__ = ["LoadedModel", "ModelIndex", "ModelSummary", "Registry", "VersionEntry"]
