"""The audit log's writer process: commits the batches it reads, one at a time.

``python -m lepton_lab.security.audit_writer LOG`` reads one JSON line per batch on
standard input (a list of items, the arguments of ``AuditLog.record``) and, once the
batch is on disk (``AuditLog.record_many``: one lock, one write, one fsync), writes one
JSON line on standard output: ``{"entries": [...]}``, or ``{"error": {"type": ...,
"errno": ..., "message": ...}}`` when nothing was written. It ends when its standard
input closes, so it never outlives the process that started it.

The server's group commit (:mod:`lepton_lab.services.audit`) says why a process.
"""

from __future__ import annotations

import json
import signal
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
