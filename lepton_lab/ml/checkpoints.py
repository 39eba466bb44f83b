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

The directory may be an fsspec URL (``file:///shared/ckpt``, ``sftp://user@host/ckpt``,
``s3://bucket/ckpt``, ``memory://`` within one process; a profile's ``checkpoints:``
setting), so workers on other machines write where the kernel, and every other worker,
reads: a run resumes from the checkpoint a lost worker wrote elsewhere. A local path,
``file://`` and ``sftp://`` (the server's POSIX rename) keep the atomic rename; object
stores replace an object whole on each write. An SFTP host is reached only if its key is
already known (:mod:`lepton_lab.ml.known_hosts`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ..errors import ConfigError, IntegrityError, first_line
from ..security.files import write_atomic
from ..security.vault import SealedWriter, decrypt_bytes

logger = logging.getLogger(__name__)

#: Checkpoint files kept per run (older ones are deleted).
KEEP_CHECKPOINTS = 2
#: The envelope's "team" for checkpoints: they are sealed for a run, not a team.
SEALED_FOR = "checkpoints"

_FILE = re.compile(r"^\.?(xgboost-r\d+\.ubj|torch-e\d+\.pt)(\..*\.tmp)?$")


def location(directory: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem of ``directory`` (a path or URL) and its path there."""
    import fsspec

    url = str(directory)
    protocol = url.split("://", 1)[0].lower() if "://" in url else ""
    ssh = protocol in ("sftp", "ssh")
    options: dict[str, Any] = {}
    if ssh:
        from .known_hosts import sftp_options

        options = sftp_options(protocol)
    try:
        return fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"checkpoints: cannot use {url!r} ({first_line(e)}); "
                          "install its fsspec filesystem or give a path") from None
    except Exception as e:  # an SFTP host refused (its key, the login) or out of reach
        if not ssh and not isinstance(e, OSError):
            raise
        raise ConfigError(f"checkpoints: cannot reach {url!r}: {first_line(e)}") from None


def _local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _renames_atomically(fs: Any) -> bool:
    """Whether ``fs.mv`` replaces a file in one step (SFTP's posix-rename), so a reader never sees half."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool({"sftp", "ssh"} & set(protocols))


def _put_whole(fs: Any, path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` on ``fs`` so that readers see the old file or the new one, where ``fs`` allows it."""
    if not _renames_atomically(fs):
        with fs.open(path, "wb") as handle:
            write(handle)
        return
    head, _, name = path.rpartition("/")
    tmp = f"{head}/.{name}.{secrets.token_hex(4)}.tmp"
    try:
        with fs.open(tmp, "wb") as handle:
            write(handle)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm_file(tmp)
        except OSError:
            pass
        raise


class Checkpoints:
    """The checkpoints of one training run in ``directory`` (a path or fsspec URL), one every ``every`` steps."""

    def __init__(self, directory: str | os.PathLike, every: int):
        self.fs, self.root = location(directory)
        # A local directory stays a Path (what the result and messages show); a URL stays a URL.
        self.dir: Path | str = Path(self.root) if _local(self.fs) else str(directory)
        self.every = int(every)
        self.run = ""
        self._key = secrets.token_bytes(32)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def reset(self, run: str) -> None:
        """Start run ``run``: earlier runs' checkpoints in the directory are removed."""
        self.run = run
        self._key = secrets.token_bytes(32)  # a new run: earlier checkpoints never open again
        if not self.every:
            return
        self.fs.makedirs(self.root, exist_ok=True)
        for entry in self.fs.ls(self.root, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name == "latest.json" or _FILE.match(name):
                self.fs.rm_file(entry)

    def spec(self) -> dict[str, Any]:
        """What a worker needs to write them (plain data, sent with the task)."""
        return {"dir": str(self.dir), "every": self.every, "run": self.run, "keep": KEEP_CHECKPOINTS,
                "key": base64.b64encode(self._key).decode("ascii")}

    def latest(self) -> dict[str, Any] | None:
        """``{"step", "file", "history", "path", ...}`` of this run's newest checkpoint, or None."""
        try:
            data = json.loads(self.fs.cat_file(self._path("latest.json")))
        except (OSError, ValueError):
            return None
        if data.get("run") != self.run or not self.fs.isfile(self._path(data.get("file", "") or "-")):
            return None
        data["path"] = self._path(data["file"])
        return data

    def read(self, latest: dict[str, Any]) -> bytes:
        """The plaintext of the checkpoint ``latest()`` named; IntegrityError if it does not open."""
        with self.fs.open(latest["path"], "rb") as src:
            return bytes(decrypt_bytes(src, RunKey(self._key), SEALED_FOR))  # type: ignore[arg-type]


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
        fs, root = location(spec["dir"])
        root = root.rstrip("/")
        fname = f"xgboost-r{step:06d}.ubj" if kind == "xgboost" else f"torch-e{step:04d}.pt"
        key = base64.b64decode(spec["key"])
        meta = json.dumps({"run": spec["run"], "kind": kind, "step": step, "file": fname, "history": history,
                           "time": time.time()}).encode()
        if _local(fs):
            # No fsync: the rename protects against a dying worker process, which is the failure
            # checkpoints are for; an fsync per checkpoint cost more than the checkpoint itself.
            write_atomic(Path(root) / fname, _sealed(key, write), durable=False)
            write_atomic(Path(root) / "latest.json", meta, durable=False)
        else:
            fs.makedirs(root, exist_ok=True)
            _put_whole(fs, f"{root}/{fname}", _sealed(key, write))
            _put_whole(fs, f"{root}/latest.json", lambda h: h.write(meta))  # named once the checkpoint is whole
        prefix = "xgboost-r" if kind == "xgboost" else "torch-e"
        names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        old = [n for n in names if n.startswith(prefix) and ".tmp" not in n]
        for n in old[:-spec.get("keep", KEEP_CHECKPOINTS)]:
            fs.rm_file(f"{root}/{n}")
    except Exception:  # a full disk must not kill the training; the next checkpoint may work
        logger.exception("checkpoint at step %s not written", step)
