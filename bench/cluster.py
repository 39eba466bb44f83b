"""Cluster benchmarks, each a ratio against plain Dask measured in the same run.

    python bench/cluster.py [--quick] [--out bench/results/cluster.json]

1. bring-up to all workers ready: ``lepton_lab.up`` (local: 2 cloud + 2 edge) vs
   ``LocalCluster(n_workers=4)`` with TLS + ``Client`` (target ratio <= 1.2);
2. one allocation snapshot at 4 workers (processes) and 64 workers (in-process), each
   against a bare ``run_on_scheduler`` round trip that reads the worker count;
3. one snapshot built from synthetic scheduler state (the scheduler's own
   ``WorkerState``/``TaskState`` objects) at 250, 500 and 1,000 workers with one job
   spread over all of them (two tasks running and two done per worker), against the floor
   of merely iterating those workers and their tasks (target <= 20 ms at 1,000, growing linearly);
4. 10,000 small tasks with the live view refreshing every second vs without
   (target overhead <= 2 %).
Runs alternate the order of A and B and report medians with their spread
(min-max): timings on a 2-core machine drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def inc(x):
    return x + 1


def bench_bring_up(rounds: int) -> dict:
    from distributed import Client, LocalCluster

    import lepton_lab

    def plain(tls: bool = True) -> float:
        # Lepton's clusters speak TLS with their own CA (with or without a server): the fair
        # baseline is distributed's own TLS cluster, with a temporary certificate made per start.
        from distributed import Security

        t = time.perf_counter()
        security = Security.temporary() if tls else None
        cluster = LocalCluster(n_workers=4, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               security=security, protocol="tls://" if tls else None)
        client = Client(cluster, security=security)
        client.wait_for_workers(4)
        dt = time.perf_counter() - t
        client.close()
        cluster.close()
        return dt

    def lepton() -> float:
        t = time.perf_counter()
        handle = lepton_lab.up(name="bench-up")
        handle.client.wait_for_workers(4)
        dt = time.perf_counter() - t
        lepton_lab.down("bench-up")
        return dt

    plain(), plain(tls=False), lepton()  # first start in a process pays for imports
    p, tcp, lp = [], [], []
    for i in range(rounds):
        if i % 2 == 0:
            p.append(plain())
            lp.append(lepton())
        else:
            lp.append(lepton())
            p.append(plain())
        tcp.append(plain(tls=False))
    mp, ml = statistics.median(p), statistics.median(lp)
    return {"compares": "lepton_lab.up (2 cloud + 2 edge, TLS with its own CA) vs LocalCluster(n_workers=4, "
                        "TLS with Security.temporary()) + Client, to all workers ready",
            "plain_s": round(mp, 3), "lepton_s": round(ml, 3), "ratio": round(ml / mp, 3), "target": "<= 1.2",
            "plain_spread_s": _spread(p), "lepton_spread_s": _spread(lp), "runs": rounds,
            "plain_tcp_s": round(statistics.median(tcp), 3)}


def _spread(xs: list[float], scale: float = 1.0) -> list[float]:
    return [round(min(xs) * scale, 3), round(max(xs) * scale, 3)]


def _count_workers(dask_scheduler) -> int:
    return len(dask_scheduler.workers)


def _time_snapshots(client, n: int) -> dict:
    """A snapshot vs the plain round trip it rides on (``run_on_scheduler`` reading the worker count)."""
    from lepton_lab.cluster import allocation

    def snap() -> float:
        t = time.perf_counter()
        allocation.snapshot(client)
        return time.perf_counter() - t

    def bare() -> float:
        t = time.perf_counter()
        client.run_on_scheduler(_count_workers)
        return time.perf_counter() - t

    snap(), bare()
    s, b = [], []
    for i in range(n):
        if i % 2 == 0:
            s.append(snap())
            b.append(bare())
        else:
            b.append(bare())
            s.append(snap())
    return {"snapshot_ms": round(statistics.median(s) * 1000, 2),
            "round_trip_ms": round(statistics.median(b) * 1000, 2),
            "snapshot_spread_ms": _spread(s, 1000), "round_trip_spread_ms": _spread(b, 1000)}


def bench_snapshot(n: int) -> dict:
    from distributed import Client, LocalCluster

    import lepton_lab

    handle = lepton_lab.up(name="bench-snap")
    try:
        four = _time_snapshots(handle.client, n)
    finally:
        lepton_lab.down("bench-snap")
    # 64 in-process workers named and resourced like Lepton's edge workers.
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        from distributed import Worker

        for i in range(64):
            cluster.worker_spec[f"edge-{i}"] = {"cls": Worker, "options": {
                "nthreads": 1, "resources": {"edge": 1}, "name": f"edge-{i}"}}
        cluster.scale(64)
        with Client(cluster) as client:
            client.wait_for_workers(64, timeout=120)
            futures = client.map(time.sleep, [0.5] * 64, resources={"edge": 1}, pure=False)
            time.sleep(0.2)
            sixty_four = _time_snapshots(client, n)
            client.gather(futures)
    return {"compares": "allocation.snapshot(client) vs client.run_on_scheduler(len(workers))",
            "workers_4": four, "workers_64": sixty_four, "target_64": "<= 20 ms", "runs": n}


def synthetic_scheduler(n_workers: int, tasks_per_worker: int = 2):
    """Scheduler state without running workers: ``n_workers`` edge and cloud workers, each
    processing ``tasks_per_worker`` tasks of one job and holding as many finished ones in
    memory, built from the scheduler's own classes."""
    from types import SimpleNamespace

    from distributed.core import Status
    from distributed.scheduler import TaskGroup, TaskPrefix, TaskState, WorkerState

    group = TaskGroup("train-xgboost", TaskPrefix("train-xgboost"))
    group.add_duration("compute", time.time() - 10, time.time() - 9)
    workers, tasks = {}, {}
    for i in range(n_workers):
        kind, site = ("cloud", "cloud") if i % 4 == 0 else ("edge", f"edge-site-{i % 7}")
        address = f"tcp://10.{i // 250}.{i % 250}.1:4000"
        ws = WorkerState(address=address, status=Status.running, pid=i, name=f"{site}-{i}",
                         nthreads=tasks_per_worker, memory_limit=2**32, local_directory="", nanny=None,
                         server_id=f"w{i}")
        ws.resources = {kind: tasks_per_worker, site: tasks_per_worker}
        ws.used_resources = {kind: tasks_per_worker, site: tasks_per_worker}
        ws.metrics = {"cpu": 90.0, "memory": 2**30}
        for j in range(2 * tasks_per_worker):
            state = "processing" if j < tasks_per_worker else "memory"
            ts = tasks[f"train-xgboost-{i}-{j}"] = TaskState(f"train-xgboost-{i}-{j}", len, state, group, False)
            ts.annotations = {"job": "fraud-train"}
            ts.resource_restrictions = {site: 1}
            if state == "processing":
                ws.processing.add(ts)
                ws.executing[ts] = 1.0
        workers[address] = ws
    return SimpleNamespace(workers=workers, address="tcp://10.255.0.1:8786", tasks=tasks,
                           task_groups={group.name: group}, extensions={})


def _iterate_state(dask_scheduler) -> int:
    """The floor: touch every worker and task field a snapshot reads, build nothing."""
    n = 0
    for ws in list(dask_scheduler.workers.values()):
        ws.name, ws.address, ws.resources, ws.used_resources, ws.metrics, ws.extra, ws.memory_limit, ws.nthreads
        for ts in list(ws.processing):
            ts.annotations, ts.prefix, ts.key, ts.resource_restrictions
            n += 1
    for ts in dask_scheduler.tasks.values():
        ts.annotations, ts.group, ts.state
    return n


def bench_snapshot_scale(n: int, sizes=(250, 500, 1000)) -> dict:
    """``collect`` (on the scheduler) + ``Snapshot.from_dict`` (in the client), without the round trip."""
    from lepton_lab.cluster import allocation

    out = {"compares": "allocation.collect + Snapshot.from_dict on synthetic scheduler state vs iterating "
                       "the same workers and tasks (the floor)", "target_1000": "<= 20 ms", "runs": n}
    for size in sizes:
        state = synthetic_scheduler(size)

        def snap() -> float:
            t = time.perf_counter()
            allocation.Snapshot.from_dict(allocation.collect(state, cluster="synthetic"))
            return time.perf_counter() - t

        def floor() -> float:
            t = time.perf_counter()
            _iterate_state(state)
            return time.perf_counter() - t

        snap(), floor()
        s, f = [], []
        for i in range(n):
            if i % 2 == 0:
                s.append(snap())
                f.append(floor())
            else:
                f.append(floor())
                s.append(snap())
        ms, mf = statistics.median(s) * 1000, statistics.median(f) * 1000
        out[f"workers_{size}"] = {"tasks": len(state.tasks), "snapshot_ms": round(ms, 2), "floor_ms": round(mf, 3),
                                  "snapshot_spread_ms": _spread(s, 1000), "floor_spread_ms": _spread(f, 1000),
                                  "snapshot_us_per_worker": round(1000 * ms / size, 2)}
    return out


def bench_view_overhead(tasks: int, rounds: int) -> dict:
    import lepton_lab
    from lepton_lab.views import AllocationView

    handle = lepton_lab.up(name="bench-view")
    client = handle.client

    def run() -> float:
        t = time.perf_counter()
        client.gather(client.map(inc, range(tasks), pure=False))
        return time.perf_counter() - t

    refresh_cpu: list[float] = []

    def with_view_run() -> tuple[float, int]:
        view = AllocationView(handle, interval=1.0)
        refresh, spent = view.refresh, [0.0]

        def timed_refresh():
            # CPU time of the refreshing thread (snapshot request, figure and tables).
            t = time.thread_time()
            try:
                return refresh()
            finally:
                spent[0] += time.thread_time() - t

        view.refresh = timed_refresh
        try:
            seconds = run()
            refresh_cpu.append(spent[0] / seconds)
            return seconds, view.updates
        finally:
            view.close()

    try:
        run()
        without, with_view, updates = [], [], []
        # ABBA order: drift over the run (the scheduler's logs growing, the machine's
        # other load) falls on both sides alike instead of always on the second one.
        for i in range(rounds):
            if i % 2 == 0:
                without.append(run())
                seconds, n = with_view_run()
            else:
                seconds, n = with_view_run()
                without.append(run())
            with_view.append(seconds)
            updates.append(n)
    finally:
        lepton_lab.down("bench-view")
    a, b = statistics.median(without), statistics.median(with_view)
    # Runs drift by ±10 % on 2 shared cores; the pairs run back to back, so the
    # median of the per-pair differences is the figure that noise disturbs least.
    paired = statistics.median(100 * (w - o) / o for o, w in zip(without, with_view))
    return {"tasks": tasks, "without_s": round(a, 3), "with_view_s": round(b, 3),
            "tasks_per_s_without": round(tasks / a), "tasks_per_s_with_view": round(tasks / b),
            "overhead_pct": round(paired, 2), "overhead_of_medians_pct": round(100 * (b - a) / a, 2),
            # What the view itself costs, free of run-to-run noise: its refresh thread's CPU
            # time as a share of the run (the scheduler shares this process and its GIL).
            "refresh_cpu_pct": round(100 * statistics.median(refresh_cpu), 3),
            "target": "<= 2 %", "runs": rounds,
            "without_runs_s": [round(x, 3) for x in without],
            "with_view_runs_s": [round(x, 3) for x in with_view],
            "view_updates_per_run": updates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cluster.json"))
    parser.add_argument("--only", choices=["snapshot-scale"],
                        help="run one bench alone (synthetic state, no cluster started)")
    a = parser.parse_args()
    if a.only == "snapshot-scale":
        print(json.dumps(bench_snapshot_scale(11 if a.quick else 41), indent=2))
        return
    rounds = 2 if a.quick else 5
    results = {
        "bring_up": bench_bring_up(rounds),
        "snapshot": bench_snapshot(20 if a.quick else 100),
        "snapshot_scale": bench_snapshot_scale(11 if a.quick else 41),
        "live_view": bench_view_overhead(2000 if a.quick else 10_000, 3 if a.quick else 9),
    }
    rows = [
        ("bring-up 2 cloud + 2 edge (s)", results["bring_up"]["plain_s"], results["bring_up"]["lepton_s"],
         f"ratio {results['bring_up']['ratio']} (target <= 1.2)"),
        ("snapshot, 4 workers (ms)", results["snapshot"]["workers_4"]["round_trip_ms"],
         results["snapshot"]["workers_4"]["snapshot_ms"], "plain = bare run_on_scheduler round trip"),
        ("snapshot, 64 workers (ms)", results["snapshot"]["workers_64"]["round_trip_ms"],
         results["snapshot"]["workers_64"]["snapshot_ms"], "plain = bare run_on_scheduler round trip"),
        *[(f"snapshot, {size} synthetic workers (ms)", results["snapshot_scale"][f"workers_{size}"]["floor_ms"],
           results["snapshot_scale"][f"workers_{size}"]["snapshot_ms"],
           f"plain = iterating the state; {results['snapshot_scale'][f'workers_{size}']['snapshot_us_per_worker']}"
           f" us/worker" + (" (target <= 20 ms)" if size == 1000 else ""))
          for size in (250, 500, 1000)],
        (f"{results['live_view']['tasks']} tasks (s)", results["live_view"]["without_s"],
         results["live_view"]["with_view_s"], f"overhead {results['live_view']['overhead_pct']} %, median of "
         f"{results['live_view']['runs']} paired runs (target <= 2 %); the view's own CPU "
         f"{results['live_view']['refresh_cpu_pct']} % of the run"),
    ]
    print(f"{'measure':34} {'plain/without':>14} {'lepton/with':>12}  note")
    for name, x, y, note in rows:
        print(f"{name:34} {x!s:>14} {y!s:>12}  {note}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
