"""Single training that borrows its host's idle workers waits for Dask data before holding them."""

import threading

import dask
import dask.array as da
import distributed
import pytest
from sklearn.datasets import make_classification

import lepton_lab
from lepton_lab.api import train
from lepton_lab.cluster.workers import workers_now
from tests.helpers import eventually

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


def _state(dask_scheduler, cloud0: str, hold_prefix: str) -> tuple[bool, bool]:
    """(a task restricted to cloud-0 alone exists: the training's persist; a hold exists)."""
    tasks = dask_scheduler.tasks.values()
    return (any(ts.worker_restrictions == {cloud0} for ts in tasks),
            any(str(ts.key).startswith(hold_prefix) for ts in tasks))


def test_data_still_to_compute_on_a_borrowed_worker_does_not_wait_behind_its_hold(cluster):
    """X's one block is computed on cloud-1 and only once a gate opens; y is in memory already,
    so the planning, which reads y, finds cloud-1 idle and borrows it. The gate opens once the
    training has persisted its split on cloud-0 and then either a hold appears or 3 s pass.
    Holding before the persisted partitions are computed takes cloud-1's only thread, so X's
    block waits behind the hold until the stall timeout; holding after, the training runs on
    cloud-0 with cloud-1's thread."""
    from distributed import Event

    client = cluster.client
    X, y = make_classification(4000, 20, n_informative=8, random_state=0)
    address = {w["name"]: a for a, w in workers_now(client).items()}
    gate = client.submit(_gate, GATE, workers=[address["edge-0"]], pure=False)
    X_f = client.submit(_after, gate, X, workers=[address["cloud-1"]], allow_other_workers=False, pure=False)
    dX = da.from_delayed(dask.delayed(_same)(X_f), X.shape, X.dtype)
    dy = client.persist(da.from_array(y, chunks=len(y)))
    distributed.wait(dy)
    held = []

    def open_gate():
        def state() -> tuple[bool, bool]:
            return client.run_on_scheduler(_state, cloud0=address["cloud-0"], hold_prefix=f"train-{NAME}-hold-")

        eventually(lambda: any(state()), 120)
        if eventually(lambda: state()[1], 3):
            held.append(True)
        Event(GATE, client=client).set()

    opener = threading.Thread(target=open_gate, daemon=True)
    opener.start()
    result = train("xgboost", data=(dX, dy), name=NAME, site="cloud", rounds=10, strategy="single",
                   stall_timeout=20, max_restarts=0, progress=False)
    opener.join()
    assert "borrowing the threads of cloud-1" in result.strategy and result.workers == ["cloud-0", "cloud-1"]
    assert not held, "a hold was taken while the data still had tasks to run on its worker"
    assert result.metrics["auc"] >= 0.9 and result.restarts == 0
