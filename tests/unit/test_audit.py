"""Audit log: the chain, filtered reads, tamper detection, concurrent appends."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from lepton_lab.errors import IntegrityError
from lepton_lab.security.audit import GENESIS, AuditLog, entry_hash, verify


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.record("alice", "clusters:create", "clusters/c1", "allow", reason="analyst in medical", gpus=1)
    audit.record("vera", "models:publish", "models/fraud", "deny", reason="viewer lacks models:publish")
    audit.record("bob", "clusters:create", "clusters/c2", "allow", request_id="req-7")
    audit.record("alice", "clusters:delete", "clusters/c1", "allow")
    audit.record("vera", "audit:read", "audit", "deny", reason="viewer lacks audit:read")
    return audit


def lines_of(audit: AuditLog) -> list[str]:
    return audit.path.read_text().splitlines(keepends=True)


def rewrite(audit: AuditLog, lines: list[str]) -> None:
    audit.path.write_text("".join(lines))


def test_entries_are_chained_and_hashed(log):
    entries = log.entries()
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["prev"] == before["hash"]
    for entry in entries:
        assert entry["hash"] == entry_hash(entry)
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None
    assert entries[0]["detail"] == {"gpus": 1}
    assert entries[2]["request_id"] == "req-7"
    assert set(entries[0]) == {
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
    }


def test_record_returns_what_was_written(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    entry = audit.record("alice", "models:read", "models/x", "allow", when=datetime(2026, 1, 1))
    assert json.loads(audit.path.read_text()) == entry
    assert entry["detail"] == {"when": "2026-01-01 00:00:00"}
    assert stat.S_IMODE(os.stat(audit.path).st_mode) == 0o600


def test_intact_log_verifies(log):
    result = verify(log.path)
    assert result.ok and result.entries == 5 and result.bad_line is None and result.reason == ""
    assert log.verify() == result


def test_missing_log_is_empty_and_fine(tmp_path):
    assert verify(tmp_path / "audit.jsonl").ok
    assert AuditLog(tmp_path / "audit.jsonl").entries() == []


def test_filters(log):
    assert [e["seq"] for e in log.entries(user="vera")] == [1, 4]
    assert [e["seq"] for e in log.entries(outcome="deny", action="audit:read")] == [4]
    assert [e["seq"] for e in log.entries(resource="clusters/c1")] == [0, 3]
    assert [e["seq"] for e in log.entries(limit=2)] == [3, 4]
    assert [e["seq"] for e in log.entries(user="alice", limit=1)] == [3]
    assert log.entries(limit=0) == []
    future = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert log.entries(since=future) == []
    assert len(log.entries(since=(datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat())) == 5
    naive_past = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=1)
    assert len(log.entries(since=naive_past)) == 5


def test_chain_continues_after_a_restart(log):
    again = AuditLog(log.path)
    entry = again.record("root", "policy:admin", "policy", "allow")
    assert entry["seq"] == 5 and entry["prev"] == log.entries()[4]["hash"]
    assert verify(log.path).ok


# -- tampering ------------------------------------------------------------------------


def test_edited_field_is_found_at_its_line(log):
    lines = lines_of(log)
    entry = json.loads(lines[1])
    entry["outcome"] = "allow"
    lines[1] = json.dumps(entry, separators=(",", ":")) + "\n"
    rewrite(log, lines)
    result = verify(log.path)
    assert not result.ok and result.bad_line == 2 and result.entries == 1
    assert "hash does not match the content" in result.reason


def test_edit_with_recomputed_hash_is_found_at_the_next_line(log):
    lines = lines_of(log)
    entry = json.loads(lines[2])
    entry["user"] = "mallory"
    entry["hash"] = entry_hash(entry)
    lines[2] = json.dumps(entry) + "\n"
    rewrite(log, lines)
    result = verify(log.path)
    assert not result.ok and result.bad_line == 4
    assert "prev does not match" in result.reason


def test_rehashed_last_line_is_caught_by_the_head(log):
    lines = lines_of(log)
    entry = json.loads(lines[-1])
    entry["outcome"] = "allow"
    entry["hash"] = entry_hash(entry)
    lines[-1] = json.dumps(entry) + "\n"
    rewrite(log, lines)
    result = verify(log.path)
    assert not result.ok and result.bad_line == 5 and "audit.jsonl.head" in result.reason


def test_deleted_first_line(log):
    rewrite(log, lines_of(log)[1:])
    result = verify(log.path)
    assert not result.ok and result.bad_line == 1 and "starts at seq 1, not 0" in result.reason


def test_deleted_middle_line(log):
    lines = lines_of(log)
    rewrite(log, lines[:2] + lines[3:])
    result = verify(log.path)
    assert not result.ok and result.bad_line == 3 and result.entries == 2
    assert "expected seq 2, found 3" in result.reason


def test_deleted_last_line(log):
    rewrite(log, lines_of(log)[:-1])
    result = verify(log.path)
    assert not result.ok and result.bad_line == 5 and result.entries == 4
    assert "removed from the end" in result.reason


def test_everything_deleted(log):
    rewrite(log, [])
    result = verify(log.path)
    assert not result.ok and "the log is empty" in result.reason
    log.path.unlink()
    assert not verify(log.path).ok


def test_deleted_head_is_reported(log):
    log.head_path.unlink()
    result = verify(log.path)
    assert not result.ok and "cannot be ruled out" in result.reason and result.entries == 5


def test_reordered_lines(log):
    lines = lines_of(log)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(log, lines)
    result = verify(log.path)
    assert not result.ok and result.bad_line == 2
    assert "reordered" in result.reason


def test_garbage_line(log):
    lines = lines_of(log)
    rewrite(log, lines[:3] + ["this is not json\n"] + lines[3:])
    result = verify(log.path)
    assert not result.ok and result.bad_line == 4 and result.reason == "line 4: not valid JSON"
    with pytest.raises(IntegrityError, match="line 4 is not valid JSON"):
        log.entries()


def test_line_with_missing_or_extra_fields(log):
    lines = lines_of(log)
    entry = json.loads(lines[0])
    entry["extra"] = 1
    rewrite(log, [json.dumps(entry) + "\n"] + lines[1:])
    assert "not an audit entry" in verify(log.path).reason


def test_cut_last_line_is_reported_and_blocks_appends(log):
    text = log.path.read_text()
    log.path.write_text(text[:-20])
    result = verify(log.path)
    assert not result.ok and result.bad_line == 5 and "cut short" in result.reason
    with pytest.raises(IntegrityError, match="the last line is not a valid entry"):
        log.record("alice", "models:read", "models/x", "allow")


# -- concurrency ------------------------------------------------------------------------


def test_threads_append_without_breaking_the_chain(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")

    def work(name):
        for i in range(25):
            audit.record(name, "clusters:read", f"clusters/{i}", "allow")

    threads = [threading.Thread(target=work, args=(f"user{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(audit.path)
    assert result.ok and result.entries == 100



def test_a_reader_never_sees_an_append_half_written(tmp_path, monkeypatch):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.record_many([{"user": "before", "action": "a", "resource": "r", "outcome": "allow"}] * 3)
    half_written, real_write = threading.Event(), os.write

    def slow(fd, data):  # a write the kernel takes in two parts, with a reader in between
        if half_written.is_set() or len(data) < 100:
            return real_write(fd, data)
        done = real_write(fd, data[: len(data) // 2])
        half_written.set()
        time.sleep(0.5)
        return done

    monkeypatch.setattr(os, "write", slow)
    batch = [{"user": f"new{i}", "action": "a", "resource": "r", "outcome": "allow", "detail": {"pad": "x" * 300}}
             for i in range(4)]
    writer = threading.Thread(target=audit.record_many, args=(batch,))
    writer.start()
    assert half_written.wait(10)
    users = [e["user"] for e in audit.entries()]  # waits for the append in progress
    writer.join()
    assert users == ["before"] * 3 + [f"new{i}" for i in range(4)]
    assert verify(audit.path).ok

APPEND = """
import sys
from lepton_lab.security.audit import AuditLog
audit = AuditLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    audit.record(sys.argv[2], "clusters:read", f"clusters/{i}", "allow")
"""


def test_processes_append_without_breaking_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    children = [subprocess.Popen([sys.executable, "-c", APPEND, str(path), f"p{n}", "30"]) for n in range(3)]
    audit = AuditLog(path)
    for i in range(30):
        audit.record("parent", "clusters:read", f"clusters/{i}", "allow")
    for child in children:
        assert child.wait(timeout=60) == 0
    result = verify(path)
    assert result.ok and result.entries == 120
    assert {e["user"] for e in audit.entries()} == {"p0", "p1", "p2", "parent"}


CRASH_MID_BATCH = """
import os, sys
from lepton_lab.security.audit import AuditLog
audit = AuditLog(sys.argv[1])
audit.record_many([{"user": "before", "action": "a", "resource": "r", "outcome": "allow"} for _ in range(3)])
real_write = os.write
def torn(fd, data):  # the machine stops half-way through the batch's one write
    real_write(fd, data[: len(data) // 2 + 7])
    os._exit(9)
os.write = torn
audit.record_many([{"user": f"lost{i}", "action": "a", "resource": "r", "outcome": "allow"} for i in range(4)])
"""


def test_crash_mid_batch_leaves_a_verifiable_prefix(tmp_path):
    path = tmp_path / "audit.jsonl"
    child = subprocess.run([sys.executable, "-c", CRASH_MID_BATCH, str(path)], capture_output=True, text=True)
    assert child.returncode == 9, child.stderr
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] and not path.read_bytes().endswith(b"\n")  # a partial line at the end
    result = verify(path)
    # Everything acknowledged (the first batch) and the complete lines of the torn batch check out.
    assert not result.ok and "cut short" in result.reason
    assert result.entries == len(lines) - 1 >= 3 and result.bad_line == result.entries + 1
    audit = AuditLog(path)
    entry = audit.record("after", "a", "r", "allow")  # the next writer drops the unacknowledged part
    assert entry["seq"] == result.entries
    after = verify(path)
    assert after.ok and after.entries == result.entries + 1
    assert [e["user"] for e in audit.entries()][:3] == ["before"] * 3
