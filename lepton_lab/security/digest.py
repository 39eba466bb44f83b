"""The plaintext digest of a stream: its size and SHA-256, hashed on a thread of its own."""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamDigest:
    """One envelope's plaintext size and SHA-256, and its size as stored.

    The stored bytes need no digest of their own: every chunk's GCM tag
    authenticates them, bound to the header, the chunk index and the final flag.
    """

    size: int
    sha256: str
    stored_size: int


class BackgroundSha256:
    """SHA-256 fed from a queue on its own thread.

    hashlib releases the GIL on large buffers, so hashing runs on the second
    core while the caller encrypts (AES-GCM is several times faster than
    SHA-256 here, so hashing is what bounds a stream).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=1)  # bounds memory to ~2 chunks
        self._error: BaseException | None = None
        self.size = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="lepton-sha256")
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._hash.update(item)
            except BaseException as err:  # keep draining so producers never block
                self._error = err
            finally:
                self._queue.task_done()

    def update(self, data) -> None:
        self.size += len(data)
        self._queue.put(data)

    def wait(self) -> None:
        """Block until every buffer handed over so far is hashed."""
        self._queue.join()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


__all__ = ["BackgroundSha256", "StreamDigest"]
