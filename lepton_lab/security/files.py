"""Small file primitives the security modules share: atomic private writes and locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], Any], *, mode: int = 0o600,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half.

    ``data`` is the bytes, or a function that writes them to the open file. The
    file is created with ``mode`` from the start, so a secret is never readable
    by others, not even for the instant before a chmod. ``durable=False`` skips
    the fsync: the rename still protects readers from a writer that dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Write ``path`` only if it does not exist yet; True when this call created it.

    Two processes racing to create the same file end with one complete file:
    the content is written aside and hard-linked into place, which fails if
    the name is already taken.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_atomic(tmp, data, mode=mode)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (``<path>.lock``) for a read-modify-write.

    The lock lives in its own file because atomic writes replace the data
    file's inode, and a lock on a replaced inode protects nothing.
    """
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
