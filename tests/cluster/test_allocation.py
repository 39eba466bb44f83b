"""Snapshots of a real cluster: who holds which resources, for which job."""

import json
import time

import dask
import pytest
from distributed import Event, wait

import lepton_lab
from lepton_lab.cluster.allocation import Snapshot
from lepton_lab.views import AllocationView, snapshot_html, snapshot_text
from tests.helpers import eventually


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
    assert w.memory_used > 0 and w.address.startswith("tls://127.0.0.1:")
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
        snap = eventually(lambda: (s := costed.snapshot()).job("fraud-train") and s.job("score-batch") and s) \
            or costed.snapshot()
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
    assert "edge-hospital-a-0" in text
    # the job of the test before has ended and stays listed as done
    assert "fraud-train" in text and "1/1" in text and "done in " in text
    assert "alloc-test" in repr(costed)
    assert "edge-hospital-a-0" in costed._repr_html_()


def test_live_view_refreshes_and_stops_when_closed(costed):
    view = AllocationView(costed, interval=0.2)
    try:
        first = view.updates
        assert eventually(lambda: view.updates >= first + 2), (first, view.updates)
        assert list(view.figure.data[0].x[1]) == ["cloud-0", "edge-hospital-a-0", "edge-hospital-a-1"]
        assert "alloc-test" in view.header.value
    finally:
        view.close()
    assert view._thread is not None
    view._thread.join(timeout=10)  # closing ends the refresh thread: nothing refreshes the view after it
    assert not view._thread.is_alive() and not view.running


def test_live_view_stops_when_cluster_goes_away():
    handle = lepton_lab.up(name="view-gone", cloud=1, edge=0)
    view = AllocationView(handle, interval=0.1)
    lepton_lab.down("view-gone")
    assert eventually(lambda: not view.running, timeout=5)


# Synthetic scheduler state: the scheduler's own WorkerState and TaskState objects,
# without running workers, so that a snapshot can be checked against a reference.

#: When the synthetic state's finished task ran (seconds before the state is built).
_FIT_0_RAN = (30.0, 28.0)


def _synthetic_scheduler():
    from types import SimpleNamespace

    from distributed.core import Status
    from distributed.scheduler import TaskGroup, TaskPrefix, TaskState, WorkerState

    groups: dict[str, TaskGroup] = {}
    tasks: dict[str, TaskState] = {}

    def task(key, job=None, restrictions=None, state="processing"):
        prefix = key.rsplit("-", 1)[0]
        if prefix not in groups:
            groups[prefix] = TaskGroup(prefix, TaskPrefix(prefix))
        ts = tasks[key] = TaskState(key, len, state, groups[prefix], False)
        ts.annotations = {"job": job} if job else {}
        ts.resource_restrictions = restrictions
        return ts

    now = time.time()
    fit_0 = task("fit-0", "fraud", state="memory")  # finished: in memory, its compute timed on its group
    fit_0.nbytes = 8
    fit_0.group.add_duration("compute", now - _FIT_0_RAN[0], now - _FIT_0_RAN[1])
    task("agg-0", "federated", state="erred")
    layout = [  # name, resources, tasks
        ("cloud-0", {"cloud": 2, "cloud-0x": 0}, [task("fit-1", "fraud", {"cloud": 1}), task("score-1")]),
        ("cloud-1", {"cloud": 2, "GPU": 1}, [task("fit-2", "fraud", {"cloud": 1, "GPU": 0.5}),
                                              task("fit-3", "fraud", {"GPU": 0.25})]),
        ("edge-hospital-a-0", {"edge": 1, "edge-hospital-a": 1}, [task("fit-4", "fraud", {"edge": 1})]),
        ("edge-hospital-a-1", {"edge": 1, "edge-hospital-a": 1}, []),
        ("edge-hospital-b-10", {"edge": 1, "edge-hospital-b": 1}, [task("score-2"), task("agg-1", "federated")]),
        ("edge-hospital-b-2", {"edge": 1, "edge-hospital-b": 1}, [task("agg-2", "federated", {"edge": 1})]),
        ("stray", {}, [task("score-3")]),
    ]
    workers = {}
    for i, (name, resources, running) in enumerate(layout):
        address = f"tcp://10.0.0.{i}:4000"
        ws = WorkerState(address=address, status=Status.running, pid=i, name=name, nthreads=2 if "cloud" in name else 1,
                         memory_limit=2**30 * (i + 1), local_directory="", nanny=None, server_id=f"s{i}")
        ws.resources = resources
        ws.used_resources = {k: v / 2 for k, v in resources.items()}
        ws.metrics = {"cpu": 10.0 * i, "memory": 2**20 * (i + 3)}
        if "GPU" in resources:
            ws.extra = {"gpu": {"name": "Tesla T4", "memory-total": 16 * 2**30}}
            ws.metrics["gpu"] = {"utilization": 42, "memory-used": 2**30}
        ws.processing.update(running)
        workers[address] = ws
    return SimpleNamespace(workers=workers, address="tcp://10.0.0.100:8786", tasks=tasks,
                           task_groups=groups, extensions={})


def _reference_snapshot(sched, cluster, costs):
    """The snapshot computed the plain way: per task, look everything up again."""
    from dataclasses import asdict

    from lepton_lab.cluster.allocation import GPUUsage, JobAllocation, SiteTotals, Totals, WorkerAllocation
    from lepton_lab.cluster.workers import site_of

    workers, sites, jobs, totals = [], {}, {}, Totals()
    for ws in sched.workers.values():
        site, kind = site_of(ws.name, ws.resources)
        per_job = {}
        for ts in ws.processing:
            name = ts.annotations["job"] if ts.annotations.get("job") else ts.prefix.name
            per_job[name] = per_job.get(name, 0) + 1
            job = jobs.setdefault(name, JobAllocation(name))
            job.tasks += 1
            if ws.name not in job.workers:
                job.workers.append(ws.name)
            if site not in job.sites:
                job.sites.append(site)
            job.resources["threads"] = job.resources.get("threads", 0) + 1
            for res, amount in (ts.resource_restrictions or {}).items():
                job.resources[res] = job.resources.get(res, 0) + amount
        gpus = []
        if "gpu" in ws.extra:
            gpus = [GPUUsage(0, ws.extra["gpu"]["name"], ws.metrics["gpu"]["utilization"],
                             ws.metrics["gpu"]["memory-used"], ws.extra["gpu"]["memory-total"])]
        w = WorkerAllocation(ws.name, ws.address, site, kind, ws.nthreads, ws.metrics["memory"], ws.memory_limit,
                             ws.metrics["cpu"], gpus, len(ws.processing), dict(ws.resources),
                             dict(ws.used_resources), per_job, costs.get(site, 0.0))
        workers.append(w)
        for agg in (sites.setdefault(site, SiteTotals(site, kind)), totals):
            agg.workers += 1
            agg.nthreads += w.nthreads
            agg.memory_used += w.memory_used
            agg.memory_limit += w.memory_limit
            agg.gpus += max(len(gpus), int(ws.resources.get("GPU", 0)))
            agg.processing += w.processing
            agg.cost_per_hour = round(agg.cost_per_hour + w.cost_per_hour, 4)

    def natural(name):
        head, _, tail = name.rpartition("-")
        return (head, int(tail)) if tail.isdigit() else (name, 0)

    for ts in sched.tasks.values():
        name = ts.annotations["job"] if ts.annotations.get("job") else ts.prefix.name
        job = jobs.setdefault(name, JobAllocation(name))
        job.total += 1
        job.done += ts.state == "memory"
        job.erred += ts.state == "erred"
    # Only the fit group has a finished task; no job has all its tasks finished.
    jobs["fraud"].started = time.time() - _FIT_0_RAN[0]
    workers.sort(key=lambda w: (w.kind != "cloud", w.site, natural(w.name)))
    return {"cluster": cluster, "scheduler": sched.address, "workers": [asdict(w) for w in workers],
            "sites": [asdict(s) for s in sorted(sites.values(), key=lambda s: (s.kind != "cloud", s.name))],
            "jobs": [asdict(j) for j in sorted(jobs.values(), key=lambda j: (-j.tasks, j.name))],
            "totals": asdict(totals)}


def test_snapshot_equals_reference_on_synthetic_state():
    from lepton_lab.cluster.allocation import collect

    sched = _synthetic_scheduler()
    costs = {"cloud": 1.5, "edge-hospital-a": 0.25, "edge-hospital-b": 0.1}
    data = collect(sched, cluster="synthetic", costs=costs)
    expected = _reference_snapshot(sched, "synthetic", costs)
    assert isinstance(data.pop("time"), float)
    for got, want in zip(data["jobs"], expected["jobs"]):  # times: to the clock's resolution
        assert got["started"] == pytest.approx(want["started"], abs=0.5)
        want["started"] = got["started"]
        assert got["elapsed"] == (pytest.approx(_FIT_0_RAN[0], abs=0.5) if got["name"] == "fraud" else 0.0)
        want["elapsed"] = got["elapsed"]
    assert data == expected
    # Same order of keys too: the JSON a client receives does not change.
    assert json.dumps(data) == json.dumps(expected)
    fraud = next(j for j in data["jobs"] if j["name"] == "fraud")
    assert fraud["tasks"] == 4 and fraud["workers"] == ["cloud-0", "cloud-1", "edge-hospital-a-0"]
    assert fraud["sites"] == ["cloud", "edge-hospital-a"]
    assert fraud["resources"] == {"threads": 4, "cloud": 2, "GPU": 0.75, "edge": 1}
    assert (fraud["done"], fraud["total"], fraud["erred"], fraud["finished"]) == (1, 5, 0, None)
    federated = next(j for j in data["jobs"] if j["name"] == "federated")
    assert (federated["done"], federated["total"], federated["erred"], federated["started"]) == (0, 3, 1, None)
    assert [j["name"] for j in data["jobs"]] == ["fraud", "score", "federated"]
    assert data["totals"]["gpus"] == 1 and data["totals"]["workers"] == 7
    assert [w["name"] for w in data["workers"]][-3:] == ["edge-hospital-b-2", "edge-hospital-b-10", "stray"]


def test_snapshot_of_synthetic_state_round_trips():
    from lepton_lab.cluster.allocation import collect

    data = collect(_synthetic_scheduler(), cluster="synthetic", costs={"cloud": 1.0})
    snap = Snapshot.from_dict(data)
    assert snap.to_dict() == data
    assert snap.workers[1].gpus[0].name == "Tesla T4" and snap.job("federated").workers == [
        "edge-hospital-b-10", "edge-hospital-b-2"]  # in the scheduler's order of workers


def test_snapshot_lists_a_worker_once_per_job_whatever_its_name():
    from lepton_lab.cluster.allocation import collect

    sched = _synthetic_scheduler()
    for i, ws in enumerate(sched.workers.values()):
        ws.name = i  # a plain ``dask worker`` may carry an integer name
    jobs = {j["name"]: j for j in collect(sched)["jobs"]}
    assert jobs["fraud"]["workers"] == ["0", "1", "2"]
    assert all(len(j["workers"]) == len(set(j["workers"])) for j in jobs.values())


def test_a_job_the_scheduler_forgot_stays_listed_as_ended(monkeypatch):
    from lepton_lab import config
    from lepton_lab.cluster.allocation import collect

    sched = _synthetic_scheduler()
    assert next(j for j in collect(sched)["jobs"] if j["name"] == "federated")["finished"] is None
    # agg-1 finishes and agg-2 is cancelled; then the scheduler forgets the job's three tasks.
    for key, state in (("agg-1", "memory"), ("agg-2", "released"), ("agg-0", "forgotten")):
        ts = sched.tasks.pop(key)
        for ws in sched.workers.values():
            ws.processing.discard(ts)
        ts.state = state
    sched.task_groups.pop("agg")
    before = time.time()
    jobs = {j["name"]: j for j in collect(sched)["jobs"]}
    ended = jobs["federated"]
    assert (ended["done"], ended["erred"], ended["total"], ended["tasks"]) == (1, 1, 3, 0)
    assert ended["finished"] >= before and ended["workers"] == []
    assert [j["name"] for j in collect(sched)["jobs"]][-1] == "federated"  # after the running ones
    monkeypatch.setattr(config, "ENDED_JOB_SECONDS", 0.0)
    time.sleep(0.01)
    assert "federated" not in {j["name"] for j in collect(sched)["jobs"]}


def quick(x):
    return x


def slow_unless(x, ev: str | None):
    if ev:
        Event(ev).wait(30)
    else:
        time.sleep(0.05)
    return x


def fail(x):
    raise ValueError(x)


def _forgotten(client, keys) -> bool:
    return client.run_on_scheduler(lambda dask_scheduler: not any(k in dask_scheduler.tasks for k in keys))


def test_finished_job_shows_all_done_and_its_elapsed_time(costed):
    client = costed.client
    with dask.annotate(job="batch-12"):
        futures = client.map(slow_unless, range(12), ev=None, pure=False)
    client.gather(futures)
    job = costed.snapshot().job("batch-12")
    assert (job.done, job.total, job.erred, job.tasks) == (12, 12, 0, 0)
    assert job.started is not None and job.finished is not None and job.finished >= job.started
    assert job.elapsed > 0 and job.elapsed == pytest.approx(job.finished - job.started, abs=0.01)
    html = snapshot_html(costed.snapshot())
    assert ">12/12</span>" in html and "done in " in html
    keys = [f.key for f in futures]
    del futures
    assert eventually(lambda: _forgotten(client, keys))
    gone = costed.snapshot().job("batch-12")  # the scheduler forgot it; the view still shows it, finished
    assert gone is not None and (gone.done, gone.total) == (12, 12)
    assert gone.elapsed == pytest.approx(job.elapsed, abs=0.01)


def test_running_job_shows_done_below_total(costed):
    client = costed.client
    ev = Event("release-batch")
    with dask.annotate(job="batch-6"):
        first = client.map(quick, range(3), pure=False)
        client.gather(first)
        rest = client.map(slow_unless, range(3), ev="release-batch", pure=False)
    try:
        # the second batch reaches the scheduler a moment after ``map`` returns
        job = eventually(lambda: (j := costed.snapshot().job("batch-6")) and j.total == 6 and j.tasks and j)
        assert job, costed.snapshot().jobs
        assert (job.done, job.total, job.finished) == (3, 6, None) and job.started is not None
        later = eventually(lambda: (j := costed.snapshot().job("batch-6")).elapsed > job.elapsed and j)
        assert later and later.done == 3  # elapsed keeps growing while the job runs
        view = AllocationView(costed, start=False)
        assert ">3/6</span>" in view.tables.value and "running " in view.tables.value
        assert "batch-6" in snapshot_text(view.last) and "3/6" in snapshot_text(view.last)
        view.close()
    finally:
        ev.set()
        client.gather(rest)
    done = costed.snapshot().job("batch-6")
    assert (done.done, done.total) == (6, 6) and done.finished is not None


def test_erred_tasks_are_counted_apart(costed):
    client = costed.client
    with dask.annotate(job="half-bad"):
        futures = client.map(quick, range(3), pure=False) + client.map(fail, range(2), pure=False)
    wait(futures)
    job = costed.snapshot().job("half-bad")
    assert (job.done, job.erred, job.total) == (3, 2, 5) and job.finished is not None
    assert "2 erred" in snapshot_html(costed.snapshot())
