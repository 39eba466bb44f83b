"""Single training that borrows its host's idle workers waits for Dask data before holding them."""

import threading
import time

import dask
import dask.array as da
import pytest
from sklearn.datasets import make_classification

import lepton_lab
from lepton_lab.api import train

NAME = "borrowed"
GATE = "lepton-test-borrowed-gate"


def _gate(event: str) -> int:
    from distributed import Event

    Event(event).wait(120)
    return 0


def _after(gate: int, rows):
    return rows


def _same(rows):
    return rows


@pytest.fixture
def cluster():
    """Two cloud workers on one host (the planner borrows the idle one) and an edge worker for the gate."""
    handle = lepton_lab.up(name="borrowed-test", cloud=2, edge=1)
    yield handle
    lepton_lab.down(handle.name)


def test_data_still_to_compute_on_a_borrowed_worker_does_not_wait_behind_its_hold(cluster):
    """The data's tasks are pinned to cloud-1 and can run only once a gate opens; the gate
    opens as soon as a hold has taken cloud-1's thread (or after 5 s without one). Holding
    before the persisted partitions are computed leaves them waiting behind the hold until
    the stall timeout; holding after, the training runs on cloud-0 with cloud-1's threads."""
    from distributed import Event

    client = cluster.client
    X, y = make_classification(4000, 20, n_informative=8, random_state=0)
    address = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    gate = client.submit(_gate, GATE, workers=[address["edge-0"]], pure=False)
    pinned = dict(workers=[address["cloud-1"]], allow_other_workers=False, pure=False)
    X_f, y_f = client.submit(_after, gate, X, **pinned), client.submit(_after, gate, y, **pinned)
    dX = da.from_delayed(dask.delayed(_same)(X_f), X.shape, X.dtype)
    dy = da.from_delayed(dask.delayed(_same)(y_f), y.shape, y.dtype)
    held = []

    def open_gate():
        end = time.monotonic() + 5
        while time.monotonic() < end and not held:
            held.extend(k for keys in client.processing().values() for k in keys
                        if str(k).startswith(f"train-{NAME}-hold-"))
            time.sleep(0.05)
        Event(GATE, client=client).set()

    opener = threading.Thread(target=open_gate, daemon=True)
    opener.start()
    result = train("xgboost", data=(dX, dy), name=NAME, site="cloud", rounds=10, strategy="single",
                   stall_timeout=20, max_restarts=0, progress=False)
    opener.join()
    assert "borrowing the threads of cloud-1" in result.strategy and result.workers == ["cloud-0", "cloud-1"]
    assert not held, "a hold was taken while the data still had tasks to run on its worker"
    assert result.metrics["auc"] >= 0.9 and result.restarts == 0
