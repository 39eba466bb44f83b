"""The registry's files on disk: names, the shape of ``index.json``, durable writes.

See :mod:`lepton_lab.registry.store` for the layout and how a version is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lepton_lab.errors import ConfigError
from lepton_lab.security.vault import canonical_json

INDEX_FORMAT = "lepton-index/1"
#: Seconds after which a staging directory is a crash leftover (no live publish takes a day).
STALE_STAGING = 24 * 3600
ARTIFACT = "artifact.enc"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def sweep_stale(staging_root: Path) -> None:
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


__all__ = ["ARTIFACT", "INDEX_FORMAT", "MANIFEST", "SIGNATURE", "STALE_STAGING", "ModelIndex", "VersionEntry",
           "fsync_dir", "sweep_stale", "write_synced"]
