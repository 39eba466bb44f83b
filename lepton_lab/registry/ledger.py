"""A model's alias log: every publish, alias move and deletion, hash-chained and root-signed.

``<root>/<team>/<model>/alias.log`` holds one canonical JSON entry per line::

    {"seq": 3, "prev": "<sha256 of line 2>", "team": "finance", "model": "fraud",
     "event": "alias", "alias": "production", "version": 2, "by": "alice", "at": "...",
     "sig": "<root signature over the entry without sig>"}

Events: ``publish`` (version, manifest SHA-256, signer, and the permission the
signer held in the team when it was granted), ``alias``, ``unalias``,
``delete`` and ``migrate`` (an admin wrote the log of a model published before
alias logs, from its verified versions; it carries the highest version number
the model ever used, so numbers of deleted versions are not reused). Folding
the verified entries gives the versions that exist and where each alias points:
what a reader trusts, rather than ``index.json``.
Each entry names the previous one, so none can be edited, dropped from the
middle or reordered; a witness kept beside the root key remembers the length
of the log, so it cannot be cut back either.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lepton_lab.errors import IntegrityError
from lepton_lab.security.signing import RootKey
from lepton_lab.security.vault import canonical_json

LOG = "alias.log"
GENESIS = "0" * 64
PURPOSE = "registry-log"

#: (log, root directory) -> (SHA-256 of the bytes verified, the state after them, entry hashes):
#: a reader that finds the same bytes again checks only what was appended since.
_VERIFIED: dict[tuple[str, str], tuple[bytes, LogState, list[str]]] = {}


@dataclass
class Published:
    """A version as the log records its publishing."""

    version: int
    manifest_sha256: str
    signer: str
    permission: str


@dataclass
class LogState:
    """What the verified log says now."""

    versions: dict[int, Published] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    last_version: int = 0
    seq: int = 0
    head: str = GENESIS
    size: int = 0  # bytes of log read


def manifest_digest(data: bytes) -> str:
    """The SHA-256 the log records for a manifest's exact bytes."""
    return hashlib.sha256(bytes(data)).hexdigest()


class AliasLog:
    """The log of model ``model`` of ``team`` in ``model_dir``, signed with ``root``."""

    def __init__(self, model_dir: Path, root: RootKey, registry: Path, team: str, model: str):
        self.path = Path(model_dir) / LOG
        self.root = root
        self.registry = Path(registry)
        self.team = team
        self.model = model

    @property
    def where(self) -> str:
        return f"the alias log of {self.team}/{self.model}"

    def read(self) -> LogState:
        """The verified state; IntegrityError for any edited, reordered, missing or cut entry."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):
            raise IntegrityError(f"{self.where} ends in a partial entry; it was cut or appended to")
        key = (str(self.path), str(self.root.directory))
        state, hashes = LogState(), [GENESIS]
        known = _VERIFIED.get(key)
        if known is not None and hashlib.sha256(data[: known[1].size]).digest() == known[0]:
            state, hashes = copy.deepcopy(known[1]), list(known[2])
        if len(data) > state.size:
            verify = self.root.verifier()
            for line in data[state.size : -1].split(b"\n"):
                entry = self._entry(line, state, verify)
                self._apply(state, entry)
                state.head = hashlib.sha256(line).hexdigest()
                hashes.append(state.head)
        state.size = len(data)
        _VERIFIED[key] = (hashlib.sha256(data).digest(), copy.deepcopy(state), list(hashes))
        witness = self.root.witness(self.registry, self.team, self.model)
        if witness is not None and (witness[0] > state.seq or hashes[witness[0]] != witness[1]):
            raise IntegrityError(
                f"{self.where} is shorter than or differs from what the registry last wrote; "
                "it was rolled back"
            )
        return state

    def _entry(self, line: bytes, state: LogState, verify: Any) -> dict[str, Any]:
        at = f"{self.where}, entry {state.seq + 1},"
        try:
            entry = json.loads(line)
            signature = entry.pop("sig")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError(f"{at} is unreadable; the log was changed") from None
        verify(PURPOSE, canonical_json(entry), signature, at.rstrip(","))
        if (entry.get("seq"), entry.get("prev"), entry.get("team"), entry.get("model")) != (
            state.seq + 1, state.head, self.team, self.model):
            raise IntegrityError(f"{at} is out of order or from another model; the log was changed")
        return entry

    def _apply(self, state: LogState, entry: dict[str, Any]) -> None:
        event, version = entry.get("event"), entry.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            version = -1 if event != "unalias" else 0  # no such version: the checks below refuse it
        ok = True
        if event == "publish":
            ok = version > state.last_version
            if ok:
                state.versions[version] = Published(version, str(entry.get("manifest_sha256")),
                                                    str(entry.get("signer")), str(entry.get("permission")))
                state.last_version = version
        elif event == "alias":
            ok = version in state.versions
            if ok:
                state.aliases[str(entry.get("alias"))] = version
        elif event == "unalias":
            ok = state.aliases.pop(str(entry.get("alias")), None) is not None
        elif event == "migrate":
            last = entry.get("last_version")
            ok = isinstance(last, int) and not isinstance(last, bool) and last >= state.last_version
            if ok:
                state.last_version = int(last)  # type: ignore[arg-type]
        elif event == "delete":
            ok = state.versions.pop(version, None) is not None
            state.aliases = {a: v for a, v in state.aliases.items() if v != version}
        else:
            ok = False
        if not ok:
            raise IntegrityError(f"{self.where}, entry {state.seq + 1}, does not follow from the ones before")
        state.seq += 1

    def append(self, state: LogState, event: str, **fields: Any) -> LogState:
        """Sign and append one entry after the verified ``state``; returns the state after it.

        Call under the model's lock, with ``state`` read under that lock.
        """
        entry = {"seq": state.seq + 1, "prev": state.head, "team": self.team, "model": self.model,
                 "event": event, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                 **fields}
        entry["sig"] = self.root.sign(PURPOSE, canonical_json(entry))
        line = canonical_json(entry)
        new = LogState(versions=dict(state.versions), aliases=dict(state.aliases),
                       last_version=state.last_version, seq=state.seq, size=state.size + len(line) + 1)
        del entry["sig"]
        self._apply(new, entry)
        new.head = hashlib.sha256(line).hexdigest()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if os.fstat(fd).st_size != state.size:
                raise IntegrityError(f"{self.where} changed while it was being written; try again")
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.root.remember(self.registry, self.team, self.model, new.seq, new.head)
        return new

    def undo(self, before: LogState) -> None:
        """Take back whatever was appended after ``before`` (a write that failed part way)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > before.size:
            if before.size == 0:
                self.path.unlink()
            else:
                os.truncate(self.path, before.size)
        if size != before.size or before.seq:
            self.root.remember(self.registry, self.team, self.model, before.seq, before.head)


__all__ = ["GENESIS", "LOG", "AliasLog", "LogState", "Published", "manifest_digest"]
