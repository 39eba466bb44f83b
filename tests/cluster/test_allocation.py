"""Snapshots of a real cluster: who holds which resources, for which job."""

import json
import time

import dask
import pytest
from distributed import Event

import lepton_lab
from lepton_lab.cluster.allocation import Snapshot
from lepton_lab.kernel.widgets import AllocationView, snapshot_html, snapshot_text


@pytest.fixture(scope="module")
def costed(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("profiles") / "profiles.yaml"
    path.write_text("""
profiles:
  costed:
    sites:
      - {name: cloud, kind: cloud, workers: 1, memory: 1GiB, cost_per_hour: 1.5}
      - {name: edge-hospital-a, kind: edge, workers: 2, memory: 512MiB, cost_per_hour: 0.25}
""")
    old = os.environ.get("LEPTON_PROFILES")
    os.environ["LEPTON_PROFILES"] = str(path)
    handle = lepton_lab.up("costed", name="alloc-test")
    yield handle
    lepton_lab.down("alloc-test")
    if old is None:
        os.environ.pop("LEPTON_PROFILES", None)
    else:
        os.environ["LEPTON_PROFILES"] = old


def wait_event(ev: str):
    Event(ev).wait(30)
    return ev


def test_idle_snapshot_per_worker_and_site(costed):
    snap = costed.snapshot()
    assert [(w.site, w.kind) for w in snap.workers] == [
        ("cloud", "cloud"), ("edge-hospital-a", "edge"), ("edge-hospital-a", "edge")]
    w = snap.workers[1]
    assert w.name == "edge-hospital-a-0" and w.nthreads == 1 and w.memory_limit == 512 * 2**20
    assert w.memory_used > 0 and w.address.startswith("tcp://127.0.0.1:")
    assert w.resources == {"edge": 1, "edge-hospital-a": 1} and w.used_resources.get("edge", 0) == 0
    edge = snap.site("edge-hospital-a")
    assert edge.workers == 2 and edge.cost_per_hour == pytest.approx(0.5)
    assert snap.totals.cost_per_hour == pytest.approx(2.0) and snap.totals.workers == 3
    assert snap.jobs == [] and snap.totals.processing == 0


def test_running_job_holds_resources_on_the_right_site(costed):
    client = costed.client
    ev = Event("release-train")
    with dask.annotate(job="fraud-train"):
        held = client.submit(wait_event, "release-train", resources={"edge-hospital-a": 1}, pure=False)
    plain = client.submit(wait_event, "release-train", key="score-batch-1", resources={"cloud": 1}, pure=False)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            snap = costed.snapshot()
            if snap.job("fraud-train") and snap.job("score-batch"):
                break
            time.sleep(0.1)
        job = snap.job("fraud-train")
        assert job is not None, snap.jobs
        assert job.tasks == 1 and job.sites == ["edge-hospital-a"]
        assert job.workers[0].startswith("edge-hospital-a-")
        assert job.resources == {"threads": 1, "edge-hospital-a": 1}
        worker = next(w for w in snap.workers if w.name == job.workers[0])
        assert worker.jobs == {"fraud-train": 1} and worker.used_resources["edge-hospital-a"] == 1
        assert snap.job("score-batch").sites == ["cloud"]  # named by its key prefix
        assert snap.site("edge-hospital-a").processing == 1
    finally:
        ev.set()
        held.result(), plain.result()


def test_snapshot_is_json_ready_and_round_trips(costed):
    snap = costed.snapshot()
    data = json.loads(json.dumps(snap.to_dict()))
    assert Snapshot.from_dict(data) == snap
    assert set(data) == {"cluster", "time", "scheduler", "workers", "sites", "jobs", "totals"}


def test_static_and_text_views(costed):
    snap = costed.snapshot()
    html = snapshot_html(snap, title="t")
    assert "edge-hospital-a-1" in html and "$2.00/h" in html
    text = snapshot_text(snap)
    assert "edge-hospital-a-0" in text and "no job running" in text
    assert "alloc-test" in repr(costed)
    assert "edge-hospital-a-0" in costed._repr_html_()


def test_live_view_refreshes_and_stops_when_closed(costed):
    view = AllocationView(costed, interval=0.2)
    try:
        first = view.updates
        time.sleep(1.0)
        assert view.updates >= first + 2
        assert list(view.figure.data[0].x[1]) == ["cloud-0", "edge-hospital-a-0", "edge-hospital-a-1"]
        assert "alloc-test" in view.header.value
    finally:
        view.close()
    time.sleep(0.5)
    assert not view.running
    n = view.updates
    time.sleep(0.5)
    assert view.updates == n


def test_live_view_stops_when_cluster_goes_away():
    handle = lepton_lab.up(name="view-gone", cloud=1, edge=0)
    view = AllocationView(handle, interval=0.1)
    lepton_lab.down("view-gone")
    deadline = time.monotonic() + 5
    while view.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not view.running
