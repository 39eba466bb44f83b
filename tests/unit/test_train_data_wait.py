"""Single training waits for its persisted data before holding borrowed workers, but not for ever."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from distributed import Client, Event, LocalCluster

from lepton_lab.cluster.workers import workers_now
from lepton_lab.ml.train import xgb_single


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def _ctx(client, stall_timeout=None, deadline=None):
    live = set(workers_now(client))
    return SimpleNamespace(name="wait", stall_timeout=stall_timeout, deadline=deadline,
                           site=SimpleNamespace(live=lambda: live)), SimpleNamespace(address=next(iter(live)))


def _wait_for(name: str) -> int:
    Event(name).wait(60)
    return 1


def _returns_within(seconds: float, ctx, pick, futures) -> bool:
    """Whether ``_in_memory`` returns within ``seconds`` (run in a thread, so a wait for ever fails, not hangs)."""
    waiter = threading.Thread(target=xgb_single._in_memory, args=(ctx, pick, futures), daemon=True)
    waiter.start()
    waiter.join(seconds)
    return not waiter.is_alive()


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(xgb_single, "READY_POLL", 0.1)


def test_returns_once_the_data_is_computed(client):
    ctx, pick = _ctx(client, stall_timeout=30)
    futures = [client.submit(_wait_for, "data-gate", pure=False)]
    threading.Timer(0.5, lambda: Event("data-gate", client=client).set()).start()
    assert _returns_within(30, ctx, pick, futures) and all(f.status == "finished" for f in futures)


def test_data_that_never_comes_is_left_to_the_supervisor_after_the_stall_timeout(client, caplog):
    ctx, pick = _ctx(client, stall_timeout=0.5)
    nowhere = client.submit(_wait_for, "never", workers=["tcp://127.0.0.1:9"], allow_other_workers=False, pure=False)
    assert _returns_within(10, ctx, pick, [nowhere]) and nowhere.status == "pending"
    assert "0 of 1 data partitions computed, none more for" in caplog.text
    client.cancel(nowhere)


def test_the_deadline_bounds_the_wait_too(client, caplog):
    ctx, pick = _ctx(client, deadline=time.monotonic() + 0.5)
    nowhere = client.submit(_wait_for, "never", workers=["tcp://127.0.0.1:9"], allow_other_workers=False, pure=False)
    assert _returns_within(10, ctx, pick, [nowhere]) and nowhere.status == "pending"
    assert "0 of 1 data partitions computed, the job's deadline has passed" in caplog.text
    client.cancel(nowhere)


def test_a_lost_pick_ends_the_wait(client):
    ctx, pick = _ctx(client)
    pick.address = "tcp://127.0.0.1:9"
    nowhere = client.submit(_wait_for, "never", workers=["tcp://127.0.0.1:9"], allow_other_workers=False, pure=False)
    assert _returns_within(10, ctx, pick, [nowhere]) and nowhere.status == "pending"
    client.cancel(nowhere)
