"""A worker the scheduler loses is closed only when its last loss outlasts ``lost-worker-timeout``."""

import asyncio
import time

import dask
import pytest

import lepton_lab
from lepton_lab.session import session


@pytest.fixture
def one_worker():
    """A cluster of its own: the tests below close its worker on purpose."""
    handle = lepton_lab.up(name="lost-workers", cloud=1, edge=0)
    yield session().transport.managed(handle.id).cluster
    lepton_lab.down(handle.name)


def _scenario(dask_cluster, steps):
    """Run ``steps(view, nanny, address, info)`` on the cluster's loop; what it returns."""
    async def run():
        address, info = next(iter(dask_cluster.scheduler_info["workers"].items()))
        return await steps(dask_cluster, dask_cluster.workers[info["name"]], address, dict(info))

    return dask_cluster.sync(run)


def test_a_worker_back_and_lost_again_is_judged_by_its_last_loss(one_worker):
    async def steps(view, nanny, address, info):
        name = info["name"]
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "2s"}):
            view._update_worker_status("remove", address)  # lost at 0 s ...
            view._update_worker_status("add", {"workers": {address: info}})  # ... its nanny brings it back ...
            await asyncio.sleep(1)
            view._update_worker_status("remove", address)  # ... and it is lost again at 1 s
        await asyncio.sleep(1.5)  # the first loss's timer has fired (2 s), the second's not yet (3 s)
        kept_then = view.workers.get(name) is nanny
        view._update_worker_status("add", {"workers": {address: info}})  # back before 3 s
        await asyncio.sleep(1)
        return kept_then, view.workers.get(name) is nanny, nanny.status.name

    kept_then, kept_after, status = _scenario(one_worker, steps)
    assert kept_then, "the first loss's timer closed a worker lost again since"
    assert kept_after and status == "running"


def test_a_worker_not_back_within_the_timeout_is_closed(one_worker):
    async def steps(view, nanny, address, info):
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
            view._update_worker_status("remove", address)
        await asyncio.sleep(1.5)
        for _ in range(100):  # its close runs as a task of the loop
            if nanny.status.name == "closed":
                break
            await asyncio.sleep(0.1)
        return info["name"] in view.workers, nanny.status.name

    still_held, status = _scenario(one_worker, steps)
    assert not still_held and status == "closed"
    # The spec still holds it, so the next reconciliation starts it afresh, and the view (which
    # heard the scheduler say the closed worker left, after it had dropped it) sees it join.
    one_worker.reconcile()
    end = time.monotonic() + 30
    while not (names := [w["name"] for w in one_worker.scheduler_info["workers"].values()]) \
            and time.monotonic() < end:
        time.sleep(0.1)
    assert names == ["cloud-0"] and one_worker.workers["cloud-0"].status.name == "running"
