"""Training checkpoints: where a run's go, how a worker writes one, and which is newest.

Workers write a checkpoint file, then ``latest.json`` naming it, each atomically
(a temporary file renamed over the old one), so a reader sees either the previous
checkpoint or the new one, never half of one.

Checkpoints are encrypted like registry artifacts (the vault's chunked AES-GCM
envelope), under a key made for the run: it lives in the training kernel's memory
and travels to the workers inside their tasks, and is never written to disk. So
the files on a site's disk are unreadable once the run is over, and any changed,
cut or swapped byte fails authentication instead of resuming from bad weights.
Team keys never leave the services for this.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ..errors import IntegrityError
from ..security.files import write_atomic
from ..security.vault import SealedWriter, decrypt_bytes

logger = logging.getLogger(__name__)

#: Checkpoint files kept per run (older ones are deleted).
KEEP_CHECKPOINTS = 2
#: The envelope's "team" for checkpoints: they are sealed for a run, not a team.
SEALED_FOR = "checkpoints"

_FILE = re.compile(r"^\.?(xgboost-r\d+\.ubj|torch-e\d+\.pt)(\..*\.tmp)?$")


class Checkpoints:
    """The checkpoints of one training run in ``directory``, one every ``every`` steps (0: none)."""

    def __init__(self, directory: Path, every: int):
        self.dir = Path(directory)
        self.every = int(every)
        self.run = ""
        self._key = secrets.token_bytes(32)

    def reset(self, run: str) -> None:
        """Start run ``run``: earlier runs' checkpoints in the directory are removed."""
        self.run = run
        self._key = secrets.token_bytes(32)  # a new run: earlier checkpoints never open again
        if not self.every:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.dir.iterdir():
            if p.name == "latest.json" or _FILE.match(p.name):
                p.unlink(missing_ok=True)

    def spec(self) -> dict[str, Any]:
        """What a worker needs to write them (plain data, sent with the task)."""
        return {"dir": str(self.dir), "every": self.every, "run": self.run, "keep": KEEP_CHECKPOINTS,
                "key": base64.b64encode(self._key).decode("ascii")}

    def latest(self) -> dict[str, Any] | None:
        """``{"step", "file", "history", "path", ...}`` of this run's newest checkpoint, or None."""
        meta = self.dir / "latest.json"
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if data.get("run") != self.run or not (self.dir / data.get("file", "")).is_file():
            return None
        data["path"] = str(self.dir / data["file"])
        return data

    def read(self, latest: dict[str, Any]) -> bytes:
        """The plaintext of the checkpoint ``latest()`` named; IntegrityError if it does not open."""
        return bytes(decrypt_bytes(latest["path"], RunKey(self._key), SEALED_FOR))  # type: ignore[arg-type]


class RunKey:
    """A run's checkpoint key in the role of the vault's key ring: it wraps each file's data key."""

    def __init__(self, key: bytes):
        self._key = bytes(key)
        self._id = hashlib.sha256(b"lepton-checkpoint-key:" + self._key).hexdigest()[:16]

    def wrap(self, team: str, data_key: bytes) -> tuple[str, bytes]:
        return self._id, aes_key_wrap(self._key, data_key)

    def unwrap(self, team: str, wrapped: bytes, key_id: str) -> bytes:
        if key_id != self._id:
            raise IntegrityError("the checkpoint was written by another run; it cannot be resumed from")
        try:
            return aes_key_unwrap(self._key, wrapped)
        except InvalidUnwrap:
            raise IntegrityError("the checkpoint's data key does not open with this run's key") from None


def _sealed(key: bytes, write: Callable[[BinaryIO], Any]) -> Callable[[BinaryIO], None]:
    """``write``, encrypting into the file it is given."""

    def into(handle: BinaryIO) -> None:
        writer = SealedWriter(handle, SEALED_FOR, RunKey(key))  # type: ignore[arg-type]
        try:
            write(writer)  # type: ignore[arg-type]
        except BaseException:
            writer.abort()
            raise
        writer.close()

    return into


def save_checkpoint(spec: dict[str, Any], kind: str, step: int, write: Callable[[BinaryIO], Any],
                    history: list[dict[str, float]]) -> None:
    """Write one checkpoint (on a worker) and prune old ones. Never raises."""
    try:
        directory = Path(spec["dir"])
        fname = f"xgboost-r{step:06d}.ubj" if kind == "xgboost" else f"torch-e{step:04d}.pt"
        # No fsync: the rename protects against a dying worker process, which is the failure
        # checkpoints are for; an fsync per checkpoint cost more than the checkpoint itself.
        key = base64.b64decode(spec["key"])
        write_atomic(directory / fname, _sealed(key, write), durable=False)
        meta = {"run": spec["run"], "kind": kind, "step": step, "file": fname, "history": history,
                "time": time.time()}
        write_atomic(directory / "latest.json", json.dumps(meta).encode(), durable=False)
        prefix = "xgboost-r" if kind == "xgboost" else "torch-e"
        old = sorted(p for p in directory.iterdir() if p.name.startswith(prefix) and ".tmp" not in p.name)
        for p in old[:-spec.get("keep", KEEP_CHECKPOINTS)]:
            p.unlink(missing_ok=True)
    except Exception:  # a full disk must not kill the training; the next checkpoint may work
        logger.exception("checkpoint at step %s not written", step)
