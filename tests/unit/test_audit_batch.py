"""The audit writer's group commit: decisions queued together share one write and one fsync."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from types import SimpleNamespace

import pytest

from lepton_lab.security.audit import AuditLog, verify
from lepton_lab.services.audit import AuditBatcher, hold_answer


def _item(user: str, i: int) -> dict:
    return {"user": user, "action": "read", "resource": f"lepton:clusters/{i}", "outcome": "allow",
            "detail": {"i": i}}


@pytest.fixture
def batcher(tmp_path):
    b = AuditBatcher(AuditLog(tmp_path / "audit.jsonl"))
    yield b
    b.close()


def test_concurrent_decisions_are_committed_in_few_batches(batcher):
    # Another process holds the log (its lock, as an append does): the first batch waits in
    # the writer, and everything decided meanwhile fills the next one.
    path = batcher.audit.path
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)

    async def main():
        tickets = []
        for i in range(200):
            tickets.append(batcher.submit(_item(f"u{i % 7}", i)))
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert not any(t.batch.done for t in tickets), "a line was acknowledged while the log was locked"
        fcntl.flock(holder, fcntl.LOCK_UN)
        return await asyncio.gather(*tickets)

    try:
        entries = asyncio.run(main())
    finally:
        os.close(holder)
    assert [e["detail"]["i"] for e in entries] == list(range(200))  # each request gets its own line
    assert [e["seq"] for e in entries] == list(range(200))
    assert batcher.lines == 200 and 2 <= batcher.batches <= 20
    result = verify(batcher.audit.path)
    assert result.ok and result.entries == 200


def test_waiters_on_several_event_loops_and_threads(batcher):
    got: dict[int, list] = {}

    def worker(n: int) -> None:
        async def main():
            return await asyncio.gather(*(batcher.submit(_item(f"t{n}", i)) for i in range(30)))

        got[n] = asyncio.run(main())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == [0, 1, 2, 3]
    assert all(e["user"] == f"t{n}" for n, entries in got.items() for e in entries)
    assert verify(batcher.audit.path).entries == 120


def test_a_failed_write_fails_every_decision_of_its_batch(tmp_path):
    # The log's folder is a file: nothing can be written, and every decision of the batch learns it.
    blocked = tmp_path / "logs"
    blocked.write_text("not a folder")
    b = AuditBatcher(AuditLog(blocked / "audit.jsonl"))
    try:
        async def main():
            return await asyncio.gather(*(b.submit(_item("u", i)) for i in range(5)), return_exceptions=True)

        outcomes = asyncio.run(main())
        assert all(isinstance(o, OSError) for o in outcomes), outcomes
        assert all("\n" not in str(o) and str(o) for o in outcomes)
        blocked.unlink()

        async def again():
            return await b.submit(_item("u", 99))

        assert asyncio.run(again())["seq"] == 0  # the writer carries on with the next batch
    finally:
        b.close()


def test_a_writer_that_dies_fails_its_batch_and_the_next_gets_a_new_one(batcher):
    async def first():
        return await batcher.submit(_item("u", 0))

    assert asyncio.run(first())["seq"] == 0
    writer = batcher._writer
    path = batcher.audit.path
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the next batch waits in the writer, which then dies

    async def killed():
        ticket = batcher.submit(_item("u", 1))
        await asyncio.sleep(0.2)
        writer.process.kill()
        return await asyncio.gather(ticket, return_exceptions=True)

    try:
        (outcome,) = asyncio.run(killed())
    finally:
        os.close(holder)
    assert isinstance(outcome, OSError) and "stopped before" in str(outcome)

    async def again():
        return await batcher.submit(_item("u", 2))

    assert asyncio.run(again())["seq"] == 1  # a new writer, chained onto what is on disk
    assert batcher._writer is not writer
    assert verify(path).entries == 2


def test_a_held_answer_is_released_by_the_loop_that_looks_without_a_loop_turn(batcher):
    released: list = []

    async def main():
        ticket = batcher.submit(_item("u", 0))
        ticket.when_durable(released.append)
        # Busy, never yielding, only looking now and then (as the loop does whenever it holds
        # or finishes an answer): the answer is released by a look, not by a loop turn.
        for _ in range(3000):
            batcher.deliver()
            if released:
                break
            time.sleep(0.01)
        assert released == [None] and ticket.batch.done
        return await ticket

    assert asyncio.run(main())["seq"] == 0
    assert released == [None]  # released once, not again by a wake-up


def test_an_answer_held_after_its_line_is_on_disk_leaves_at_once(batcher):
    class Connection:
        def __init__(self):
            self.sent = []

        def write_headers(self, start_line, headers, chunk=None):
            self.sent.append(("headers", chunk))
            return asyncio.get_running_loop().create_future()

        def finish(self):
            self.sent.append(("finish",))

    real = Connection()
    handler = SimpleNamespace(request=SimpleNamespace(connection=real))

    async def main():
        ticket = batcher.submit(_item("u", 0))
        await ticket  # on disk before the answer is held
        assert hold_answer(handler, ticket)
        assert handler.request.connection is real  # nothing to wait for
        handler.request.connection.write_headers("200", {}, b"{}")
        handler.request.connection.finish()

    asyncio.run(main())
    assert real.sent == [("headers", b"{}"), ("finish",)]


def test_close_commits_what_is_pending(tmp_path):
    b = AuditBatcher(AuditLog(tmp_path / "audit.jsonl"))
    tickets = [b.submit(_item("u", i)) for i in range(10)]
    b.close()
    assert [t.result()["seq"] for t in tickets] == list(range(10))
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(_item("u", 11))


def test_the_writer_answers_a_bad_batch_with_one_error_and_goes_on(tmp_path):
    from io import BytesIO

    from lepton_lab.security.audit_writer import reply_of, serve

    lines = [b'{"not": "a list"}\n', b"not json\n", json.dumps([_item("u", 0)]).encode() + b"\n"]
    out = BytesIO()
    serve(AuditLog(tmp_path / "audit.jsonl"), lines, out)
    replies = [reply_of(line) for line in out.getvalue().splitlines()]
    assert [sorted(r) for r in replies] == [["error"], ["error"], ["entries"]]
    assert "list" in replies[0]["error"]["message"] and "\n" not in replies[1]["error"]["message"]
    assert replies[2]["entries"][0]["seq"] == 0
    assert reply_of(b"garbage")["error"]["message"] == "the audit writer's answer could not be read"


def test_close_ends_the_writer_process(tmp_path):
    b = AuditBatcher(AuditLog(tmp_path / "audit.jsonl"))

    async def one():
        return await b.submit(_item("u", 0))

    assert asyncio.run(one())["seq"] == 0
    writer = b._writer
    assert writer is not None and writer.process.poll() is None
    b.close()
    b.close()  # a second close (the server's stop, then its exit) finds nothing to do
    writer.process.wait(30)
    assert writer.process.returncode == 0
