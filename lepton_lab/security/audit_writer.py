"""The audit log's writer process: commits the batches it reads, one at a time.

``python -m lepton_lab.security.audit_writer LOG`` reads one JSON line per batch on
standard input (a list of items, the arguments of ``AuditLog.record``) and, once the
batch is on disk (``AuditLog.record_many``: one lock, one write, one fsync), writes one
JSON line on standard output: ``{"entries": [...]}``, or ``{"error": {"type": ...,
"errno": ..., "message": ...}}`` when nothing was written. It ends when its standard
input closes, so it never outlives the process that started it.

:class:`WriterProcess` is the other end, in the server; the server's group commit
(:mod:`lepton_lab.services.audit`) says why a process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

from lepton_lab.errors import IntegrityError
from lepton_lab.security.audit import AuditLog


def describe(error: BaseException) -> dict[str, Any]:
    """An error as the one line the writer sends back."""
    return {"type": "integrity" if isinstance(error, IntegrityError) else
            "os" if isinstance(error, OSError) else "other",
            "errno": getattr(error, "errno", None), "message": str(error) or type(error).__name__}


def rebuild(error: dict[str, Any]) -> Exception:
    """The error ``describe`` sent, as an exception of its kind."""
    message = str(error.get("message", "the audit writer failed"))
    if error.get("type") == "integrity":
        return IntegrityError(message)
    if error.get("type") == "os":
        errno = error.get("errno")
        return OSError(errno, message) if isinstance(errno, int) else OSError(message)
    return RuntimeError(message)


def serve(log: AuditLog, stdin: Any, stdout: Any) -> None:
    """Commit each batch read from ``stdin`` and answer it on ``stdout``, until ``stdin`` ends."""
    for line in stdin:
        try:
            items = json.loads(line)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError("a batch is a JSON list of audit items")
            reply: dict[str, Any] = {"entries": log.record_many(items)}
        except Exception as e:  # the batch fails as a whole; the next one is tried afresh
            reply = {"error": describe(e)}
        stdout.write(json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n")
        stdout.flush()


def reply_of(line: bytes) -> dict[str, Any]:
    """One line the writer sent back; one it cannot have sent is an error of its batch."""
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not ("entries" in reply or "error" in reply):
        return {"error": {"type": "other", "message": "the audit writer's answer could not be read"}}
    return reply


class WriterProcess:
    """The server's side of one writer process: its two pipes, replies read without waiting."""

    def __init__(self, path: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lepton_lab.security.audit_writer", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests = self.process.stdin.fileno()
        self.replies = self.process.stdout.fileno()
        os.set_blocking(self.replies, False)
        self.buffer = b""
        self.ended = False
        #: Event loops that still have the reply pipe in their selector (kept by the batcher).
        self.watched_by = 0

    def send(self, items: list[dict[str, Any]]) -> None:
        data = json.dumps(items, default=str, separators=(",", ":")).encode("utf-8") + b"\n"
        while data:
            data = data[os.write(self.requests, data):]

    def read(self) -> list[dict[str, Any]] | None:
        """The replies that have arrived in full, without waiting; None once the process has ended."""
        if self.ended:
            return None
        while True:
            try:
                chunk = os.read(self.replies, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self.ended = True
                break
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        replies = [reply_of(line) for line in lines]
        return replies if replies or not self.ended else None

    def stop(self, timeout: float) -> None:
        """End the process (its input closes, so it finishes the batch it has and exits)."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close_replies(self) -> None:
        """Close the reply pipe, once no event loop's selector holds it."""
        assert self.process.stdout is not None
        self.process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lepton_lab.security.audit_writer LOG", file=sys.stderr)
        return 2
    # Ctrl-C in the server's terminal reaches this process too; it stops when the server closes its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(AuditLog(args[0]), sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
