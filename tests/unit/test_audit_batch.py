"""The audit writer's group commit: decisions queued together share one write and one fsync."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lepton_lab.security.audit import AuditLog, verify
from lepton_lab.services.audit import AuditBatcher


def _item(user: str, i: int) -> dict:
    return {"user": user, "action": "read", "resource": f"lepton:clusters/{i}", "outcome": "allow",
            "detail": {"i": i}}


@pytest.fixture
def batcher(tmp_path):
    b = AuditBatcher(AuditLog(tmp_path / "audit.jsonl"))
    yield b
    b.close()


def test_concurrent_decisions_are_committed_in_few_batches(batcher, monkeypatch):
    real = batcher.audit.record_many

    def slow_disk(items):  # an fsync that takes a while: the next batch fills meanwhile
        time.sleep(0.02)
        return real(items)

    monkeypatch.setattr(batcher.audit, "record_many", slow_disk)

    async def main():
        tickets = []
        for i in range(200):
            tickets.append(batcher.submit(_item(f"u{i % 7}", i)))
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        return await asyncio.gather(*tickets)

    entries = asyncio.run(main())
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


def test_a_failed_write_fails_every_decision_of_its_batch(batcher, monkeypatch):
    def full_disk(items):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batcher.audit, "record_many", full_disk)

    async def main():
        return await asyncio.gather(*(batcher.submit(_item("u", i)) for i in range(5)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, OSError) for o in outcomes)
    monkeypatch.undo()

    async def again():
        return await batcher.submit(_item("u", 99))

    assert asyncio.run(again())["seq"] == 0  # the writer carries on with the next batch


def test_close_commits_what_is_pending(tmp_path):
    b = AuditBatcher(AuditLog(tmp_path / "audit.jsonl"))
    tickets = [b.submit(_item("u", i)) for i in range(10)]
    b.close()
    assert [t.result()["seq"] for t in tickets] == list(range(10))
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(_item("u", 11))
