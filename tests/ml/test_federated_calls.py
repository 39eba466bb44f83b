"""How the coordinator reaches the sites: one broadcast for a control message, each worker
bounding its own calls, a worker that never answers not costing the others their answers;
and the scheduler's own view of the workers, not the client's refreshed cache."""

from __future__ import annotations

import asyncio
import threading
import time

import dask
import pytest
from distributed import Client, LocalCluster

from lepton_lab.cluster.workers import workers_now
from lepton_lab.ml.federated import calls

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client():
    # The client refreshes its cached scheduler identity every 5 ms here: the race is frequent.
    with dask.config.set({"distributed.client.scheduler-info-interval": "5ms"}):
        with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster) as c:
                c.wait_for_workers(2)
                yield c


def _echo(site: str, value: int) -> tuple[str, int]:
    if value < 0:
        raise ValueError(f"site {site} refuses {value}")
    if value == 99:
        time.sleep(3)
    return site, value * 2


def test_workers_now_is_never_the_cache_without_workers(client):
    assert all(len(workers_now(client)) == 2 for _ in range(500))


def test_one_broadcast_answers_every_site_and_names_each_failure(client):
    a, b = sorted(workers_now(client))
    results, failed = calls.rpc(client, _echo, {"s1": (a, ("s1", 1)), "s2": (b, ("s2", 2)), "s3": (a, ("s3", 3)),
                                                "bad": (b, ("bad", -1)), "slow": (a, ("slow", 99))}, 1.0)
    assert results == {"s1": ("s1", 2), "s2": ("s2", 4), "s3": ("s3", 6)}
    assert failed == {"bad": "ValueError: site bad refuses -1", "slow": "no answer within 1 s"}


def _in_a_thread(site: str) -> bool:
    """Whether this runs in a thread of the event loop's executor (where ``asyncio.to_thread`` runs)."""
    return threading.current_thread().name.startswith("asyncio")


async def _echo_on_loop(site: str, value: int) -> tuple[str, int, bool]:
    if value < 0:
        raise ValueError(f"site {site} refuses {value}")
    if value == 99:
        await asyncio.sleep(3)
    # A blocking call here would hold the worker; the coroutine runs on its event loop itself.
    return site, value * 2, _in_a_thread(site)


def test_a_coroutine_runs_on_the_event_loop_each_bounded_and_the_others_answer(client):
    a, b = sorted(workers_now(client))
    t = time.perf_counter()
    results, failed = calls.rpc(client, _echo_on_loop,
                                {"s1": (a, ("s1", 1)), "s2": (b, ("s2", 2)), "s3": (a, ("s3", 3)),
                                 "bad": (b, ("bad", -1)), "late": (a, ("late", 99))}, 1.0)
    # No call ran in the loop's executor thread: on the event loop, with no thread hop.
    assert results == {"s1": ("s1", 2, False), "s2": ("s2", 4, False), "s3": ("s3", 6, False)}
    assert failed == {"bad": "ValueError: site bad refuses -1", "late": "no answer within 1 s"}
    assert time.perf_counter() - t < 2.5  # the late call was cut at its deadline, not awaited
    # A plain function still runs in a thread, where blocking holds up nothing else.
    assert calls.rpc(client, _in_a_thread, {"s1": (a, ("s1",))}, 5.0) == ({"s1": True}, {})


def test_a_worker_that_never_answers_costs_the_others_nothing(client, monkeypatch):
    a, b = sorted(workers_now(client))

    async def never(fn, by_address, timeout, dask_worker=None):
        await asyncio.sleep(60)

    # The broadcast stalls as behind a cut link; each worker is then asked on its own.
    monkeypatch.setattr(calls, "_serve_here", never)
    monkeypatch.setattr(calls, "ANSWER_GRACE", 0.5)
    t = time.perf_counter()
    results, failed = calls.rpc(client, _echo, {"s1": (a, ("s1", 1)), "s2": (b, ("s2", 2))}, 1.0)
    assert results == {"s1": ("s1", 2), "s2": ("s2", 4)} and failed == {}
    assert time.perf_counter() - t < 10


def test_no_calls_is_no_trip(client):
    assert calls.rpc(client, _echo, {}, 1.0) == ({}, {})
