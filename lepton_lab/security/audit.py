"""Append-only, hash-chained audit log of every allow and deny (JSONL).

Each line is one ``AuditEntry``. Its ``hash`` is the SHA-256 of the entry's
canonical JSON without ``hash``, and ``prev`` is the hash of the line before
(64 zeros for the first), so editing, removing or reordering any line breaks
the chain at that line, and ``seq`` must count up from 0.

A chain alone cannot notice lines cut from the *end*: what is left is still a
valid chain. So every append also rewrites a small sidecar,
``<log>.head``, with the last seq and hash; ``verify`` checks the log reaches
it. Someone able to rewrite both files can still cut the end unnoticed; to
rule that out too, copy the head elsewhere from time to time (another
machine, a ticket, a signed note).

Only the log is synced (one fsync a batch); the head is replaced after it, by a
rename. A crash may therefore leave a head a few lines behind the log, never
ahead of it: lines it does not name yet are still chained, and the next append
names them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

from lepton_lab.config import audit_path
from lepton_lab.errors import IntegrityError
from lepton_lab.security.files import write_atomic

logger = logging.getLogger(__name__)

#: ``prev`` of the first entry.
GENESIS = "0" * 64

_FIELDS = (
    "seq",
    "time",
    "user",
    "action",
    "resource",
    "outcome",
    "reason",
    "request_id",
    "detail",
    "prev",
    "hash",
)


class AuditEntry(TypedDict):
    """One line of the audit log, as stored and as returned to callers."""

    seq: int
    time: str  # ISO 8601, UTC
    user: str
    action: str  # e.g. "clusters:create"
    resource: str  # e.g. "clusters/c-12ab" or "models/fraud"
    outcome: str  # "allow", "deny", "error", ...
    reason: str
    request_id: str | None
    detail: dict[str, Any]
    prev: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``: whether the log is intact and, if not, where it first breaks."""

    ok: bool
    entries: int  # entries checked and found good
    bad_line: int | None = None  # 1-based line number of the first problem
    reason: str = ""  # one line, empty when ok


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of the entry's canonical JSON, leaving out its own ``hash``."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditLog:
    """The audit log at ``path`` (default ``config.audit_path()``); safe across threads and processes."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(audit_path() if path is None else path)
        self.head_path = self.path.with_name(self.path.name + ".head")

    def record(
        self,
        user: str,
        action: str,
        resource: str,
        outcome: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        **detail: Any,
    ) -> AuditEntry:
        """Append one entry and return it; ``detail`` keywords are kept as JSON under ``detail``."""
        item = dict(user=user, action=action, resource=resource, outcome=outcome, reason=reason,
                    request_id=request_id, detail=detail)
        return self.record_many([item])[0]

    def record_many(self, items: list[dict[str, Any]]) -> list[AuditEntry]:
        """Append several entries, chained in order, with one lock and one fsync.

        Each item has the arguments of :meth:`record` (``detail`` as a dict). A busy
        server commits a batch of decisions this way instead of one fsync each.
        """
        if not items:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        out: list[AuditEntry] = []
        try:
            # One lock per open file description: this serialises threads (each opens
            # its own descriptor) and processes alike, across the read of the last
            # line and the append that chains onto it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._tail(fd)
            lines = []
            for item in items:
                reason = item.get("reason", "")
                request_id = item.get("request_id")
                entry: dict[str, Any] = {
                    "seq": seq,
                    "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                    "user": str(item["user"]),
                    "action": str(item["action"]),
                    "resource": str(item["resource"]),
                    "outcome": str(item["outcome"]),
                    "reason": " ".join(str(reason).split()),
                    "request_id": None if request_id is None else str(request_id),
                    # Round-trip now so the hash covers exactly what a reader will parse.
                    "detail": json.loads(json.dumps(item.get("detail") or {}, default=str)),
                    "prev": prev,
                }
                entry["hash"] = entry_hash(entry)
                lines.append(json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n")
                out.append(AuditEntry(**entry))  # type: ignore[typeddict-item]
                seq, prev = seq + 1, entry["hash"]
            data = "".join(lines).encode("utf-8")
            while data:  # a write to a regular file may, rarely, take only part of the buffer
                data = data[os.write(fd, data) :]
            os.fsync(fd)
            last = out[-1]
            # After the log's fsync, so the head never names a line the disk might not hold.
            write_atomic(self.head_path, json.dumps({"seq": last["seq"], "hash": last["hash"]}).encode(),
                         durable=False)
        finally:
            os.close(fd)
        return out

    def entries(
        self,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        resource: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every filter given, oldest first; ``limit`` keeps the newest ``limit``.

        ``since`` is a datetime or ISO string (naive means UTC). A line that is
        not JSON raises IntegrityError; ``verify`` says more.
        """
        if isinstance(since, str):
            since = datetime.fromisoformat(since)
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        wanted = {"user": user, "action": action, "outcome": outcome, "resource": resource}
        matches: list[AuditEntry] = []
        for entry in self._read():
            if any(value is not None and entry.get(key) != value for key, value in wanted.items()):
                continue
            if since is not None and datetime.fromisoformat(entry["time"]) < since:
                continue
            matches.append(entry)
        if limit is not None:
            matches = matches[-limit:] if limit > 0 else []
        return matches

    def verify(self) -> VerifyResult:
        """Check this log's chain and head; see ``verify``."""
        return verify(self.path)

    def _read(self) -> Iterator[AuditEntry]:
        """Every entry, read under a shared lock so no append is seen half-written.

        A last line with no end of line was never acknowledged (a crash cut it; the
        next append drops it), so it is not an entry and is left out.
        """
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            for line_number, raw in enumerate(handle, 1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    entry = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise IntegrityError(
                        f"{self.path}: line {line_number} is not valid JSON; run verify() to see what changed"
                    ) from None
                yield entry

    def _tail(self, fd: int) -> tuple[int, str]:
        """The next seq and the hash to chain onto, from the last line of the open log."""
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            size = self._drop_torn_tail(fd, size)
        if size == 0:
            return 0, GENESIS
        last = _line_before(fd, size)
        try:
            entry = json.loads(last)
            return int(entry["seq"]) + 1, str(entry["hash"])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"{self.path}: the last line is not a valid entry, so nothing can be chained onto it; "
                f"run verify() and move the damaged log aside"
            ) from None

    def _drop_torn_tail(self, fd: int, size: int) -> int:
        """Cut a last line left half-written by a crash, if no head ever recorded it; the new size.

        A batch is acknowledged only after its lines are synced and the head names its
        last seq, so a partial line past the head's seq was never acknowledged and the
        lines before it are a verifiable prefix. A cut line the head does record is
        damage, not a crash: that is refused.
        """
        complete = size - len(_line_before(fd, size + 1)) if size else 0
        seq = -1
        if complete:
            try:
                seq = int(json.loads(_line_before(fd, complete))["seq"])
            except (ValueError, KeyError, TypeError):
                complete = -1
        head, _ = _read_head(self.head_path)
        if complete < 0 or (head is not None and head["seq"] > seq):
            raise IntegrityError(
                f"{self.path}: the last line is not a valid entry, so nothing can be chained onto it; "
                f"run verify() and move the damaged log aside"
            )
        logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted write",
                       self.path, size - complete)
        os.ftruncate(fd, complete)
        os.fsync(fd)
        return complete


def _line_before(fd: int, end: int) -> bytes:
    """The line ending just before offset ``end`` (its end-of-line excluded), read backwards in blocks."""
    data, position = b"", end - 1
    while position > 0:
        step = min(4096, position)
        position -= step
        data = os.pread(fd, step, position) + data
        if data.rfind(b"\n") >= 0:
            break
    return data.rsplit(b"\n", 1)[-1]


def verify(path: str | Path) -> VerifyResult:
    """Check the log at ``path`` line by line and against its head file.

    Finds edited lines, lines removed at the start, middle or end, reordered
    lines and lines that are not JSON; the result names the first bad line.
    """
    path = Path(path)
    head_path = path.with_name(path.name + ".head")
    head, problem = _read_head(head_path)
    if problem:
        return VerifyResult(False, 0, None, problem)
    if not path.exists():
        if head is not None:
            return VerifyResult(
                False, 0, 1, f"{path} is missing but {head_path.name} records seq {head['seq']}"
            )
        return VerifyResult(True, 0)

    prev, count = GENESIS, 0
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            problem = _check_line(raw, count, prev, head, head_path.name)
            if problem:
                return VerifyResult(False, count, line_number, f"line {line_number}: {problem}")
            prev, count = json.loads(raw)["hash"], count + 1

    if head is None:
        if count:
            reason = f"{head_path.name} is missing, so lines removed from the end cannot be ruled out"
            return VerifyResult(False, count, None, reason)
        return VerifyResult(True, 0)
    if head["seq"] >= count:
        ends = f"ends at seq {count - 1}" if count else "is empty"
        reason = (
            f"the log {ends} but {head_path.name} records seq {head['seq']}: lines were removed from the end"
        )
        return VerifyResult(False, count, count + 1, reason)
    return VerifyResult(True, count)


def _check_line(raw: bytes, seq: int, prev: str, head: dict[str, Any] | None, head_name: str) -> str:
    """What is wrong with one raw line expected to hold entry ``seq`` chained onto ``prev``; '' if nothing."""
    if not raw.endswith(b"\n"):
        return "cut short (no end of line): a write was interrupted or the line was edited"
    try:
        entry = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not valid JSON"
    if not isinstance(entry, dict) or sorted(entry) != sorted(_FIELDS):
        return f"not an audit entry (its fields must be exactly: {', '.join(_FIELDS)})"
    if entry["seq"] != seq:
        if seq == 0:
            return f"the log starts at seq {entry['seq']!r}, not 0: lines were removed from the start"
        return f"expected seq {seq}, found {entry['seq']!r}: lines were removed, repeated or reordered"
    if entry["prev"] != prev:
        return "prev does not match the hash of the line before: that line was edited or a line removed"
    if entry_hash(entry) != entry["hash"]:
        return "hash does not match the content: the line was edited"
    if head is not None and seq == head["seq"] and entry["hash"] != head["hash"]:
        return f"differs from the entry recorded in {head_name}: the end of the log was rewritten"
    return ""


def _read_head(head_path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        head = json.loads(head_path.read_bytes())
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError):
        return None, f"{head_path.name} is not valid JSON"
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("seq"), int)
        or not isinstance(head.get("hash"), str)
    ):
        return None, f"{head_path.name} is not a head record ({{'seq': int, 'hash': str}})"
    return head, ""


__all__ = ["GENESIS", "AuditEntry", "AuditLog", "VerifyResult", "entry_hash", "verify"]
