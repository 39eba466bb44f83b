"""Group commit: an answer leaves only after its audit line is on disk; many at once keep the chain whole."""

import asyncio
import fcntl
import os
import subprocess
import sys

from lepton_lab.security.audit import verify


def _services(jp_serverapp):
    return jp_serverapp.web_app.settings["lepton"]


async def test_the_answer_waits_for_its_audit_line(as_user, jp_serverapp):
    audit = _services(jp_serverapp).audit
    before = len(audit.entries())
    # Another process holds the log (as an append does): the writer cannot commit until it lets go.
    audit.path.parent.mkdir(parents=True, exist_ok=True)
    holder = os.open(audit.path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        answer = asyncio.ensure_future(as_user("alice", "lepton", "api", "templates"))
        await asyncio.sleep(0.5)
        assert not answer.done(), "the answer left before its audit line was written"
        size = os.fstat(holder).st_size
        fcntl.flock(holder, fcntl.LOCK_UN)
    finally:
        os.close(holder)
    code, body = await asyncio.wait_for(answer, 30)
    assert code == 200 and body
    lines = audit.entries()
    assert len(lines) > before and audit.path.stat().st_size > size
    assert lines[-1]["user"] == "alice" and lines[-1]["resource"] == "lepton:templates"
    assert lines[-1]["outcome"] == "allow"


async def test_an_unwritable_line_withholds_the_answer(as_user, jp_serverapp):
    audit = _services(jp_serverapp).audit
    aside = audit.path.with_name(audit.path.name + ".aside")
    if audit.path.exists():
        audit.path.rename(aside)
    audit.path.mkdir(parents=True)  # the log is a folder now: no line can be appended
    try:
        code, body = await as_user("alice", "lepton", "api", "templates")
        assert code == 500 and "could not be written to the audit log" in body["message"]
        assert "templates" not in body  # nothing of the handler's answer leaked
        code, body = await as_user("bob", "lepton", "api", "audit")  # a refusal waits too, and fails the same way
        assert code == 500
    finally:
        audit.path.rmdir()
        if aside.exists():
            aside.rename(audit.path)
    code, _ = await as_user("alice", "lepton", "api", "templates")
    assert code == 200  # the log is back and so are the answers


async def test_concurrent_requests_share_fsyncs_and_keep_the_chain(as_user, jp_serverapp, lepton_home):
    batcher = _services(jp_serverapp)._audit_batcher
    batches, lines = batcher.batches, batcher.lines
    calls = [as_user(who, "lepton", "api", what) for _ in range(10) for who in ("alice", "bob", "vera", "fiona")
             for what in ("templates", "clusters", "audit")]
    answers = await asyncio.gather(*calls)
    assert {code for code, _ in answers} <= {200, 403}
    written = batcher.lines - lines
    assert written >= len(calls)
    assert batcher.batches - batches < written  # grouped: fewer commits than lines
    path = lepton_home / "audit.jsonl"
    ok = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "audit", "verify", "--file", str(path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stderr
    assert verify(path).entries == len(path.read_text().splitlines())
