"""Group commit: an answer leaves only after its audit line is on disk; many at once keep the chain whole."""

import asyncio
import subprocess
import sys
import threading

from lepton_lab.security.audit import verify


def _services(jp_serverapp):
    return jp_serverapp.web_app.settings["lepton"]


async def test_the_answer_waits_for_its_audit_line(as_user, jp_serverapp, monkeypatch):
    services = _services(jp_serverapp)
    audit = services.audit
    release, writing = threading.Event(), threading.Event()
    real = audit.record_many

    def slow_disk(items):
        writing.set()
        assert release.wait(30)
        return real(items)

    monkeypatch.setattr(audit, "record_many", slow_disk)
    before = len(audit.entries())
    answer = asyncio.ensure_future(as_user("alice", "lepton", "api", "templates"))
    for _ in range(300):  # the decision is queued and the handler runs, but the disk is held
        if writing.is_set():
            break
        await asyncio.sleep(0.01)
    assert writing.is_set()
    await asyncio.sleep(0.3)
    assert not answer.done(), "the answer left before its audit line was written"
    assert len(audit.entries()) == before
    release.set()
    code, body = await asyncio.wait_for(answer, 30)
    assert code == 200 and body
    lines = audit.entries()
    assert lines[-1]["user"] == "alice" and lines[-1]["resource"] == "lepton:templates"
    assert lines[-1]["outcome"] == "allow"


async def test_an_unwritable_line_withholds_the_answer(as_user, jp_serverapp, monkeypatch):
    audit = _services(jp_serverapp).audit

    def broken_disk(items):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit, "record_many", broken_disk)
    code, body = await as_user("alice", "lepton", "api", "templates")
    assert code == 500 and "could not be written to the audit log" in body["message"]
    assert "templates" not in body  # nothing of the handler's answer leaked
    code, body = await as_user("bob", "lepton", "api", "audit")  # a refusal waits too, and fails the same way
    assert code == 500


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
