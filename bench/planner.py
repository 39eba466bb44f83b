"""Placement planner benchmark: solve time on a large synthetic fleet, and plan cost vs greedy.

    python bench/planner.py [--sites 50] [--jobs 500] [--repeats 3] [--out bench/results/planner.json]

Each repeat draws a fleet (seeded): ``--sites`` sites (a tenth of them cloud sites with GPUs)
of 24-48 threads and a cost per thread-hour of 0.05-3.00, and ``--jobs`` jobs of 1-4 threads,
0-2 GiB, a few with a GPU, half with data on a site (1 GB, may move at a penalty of 1 per GB).
It reports the planner's solve time with its default 1 % gap to the LP bound and its own
time budget (``--time-limit``, default 1 s for the whole plan: past it the best plan found, or
the greedy one, is returned and counted as a fallback) (median, min-max; target <= 1 s) and
proven optimal (``gap=0``, 60 s), the ratio of its plan's cost to a greedy placement's
(biggest job first, cheapest site with room; < 1: the planner is cheaper) and to the optimum.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

from lepton_lab.cluster.planner import Job, SiteCapacity, greedy, plan

RESULTS = Path(__file__).resolve().parent / "results" / "planner.json"
GiB = 2**30


def fleet(seed: int, n_sites: int, n_jobs: int) -> tuple[list[Job], list[SiteCapacity]]:
    rng = random.Random(seed)
    n_cloud = max(1, n_sites // 10)
    sites = [SiteCapacity(f"site-{i}", "cloud" if i < n_cloud else "edge", threads=rng.randint(24, 48),
                          memory=64 * GiB, gpus=rng.randint(2, 4) if i < n_cloud else 0,
                          cost_per_thread_hour=round(rng.uniform(0.05, 3.0), 2)) for i in range(n_sites)]
    jobs = [Job(f"job-{j}", threads=rng.randint(1, 4), memory=rng.randint(0, 2) * GiB,
                gpus=int(rng.random() < 0.01), hours=rng.choice([0.5, 1.0, 2.0]),
                data_site=f"site-{rng.randrange(n_sites)}" if rng.random() < 0.5 else None,
                data_gb=1.0) for j in range(n_jobs)]
    return jobs, sites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=1.0, help="the planner's budget per plan (s)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    times, exact_times, ratios, optimal_ratios, statuses = [], [], [], [], []
    for seed in range(a.repeats):
        jobs, sites = fleet(seed, a.sites, a.jobs)
        start = time.perf_counter()
        p = plan(jobs, sites, time_limit=a.time_limit)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        best = plan(jobs, sites, time_limit=60, gap=0.0)
        exact_times.append(time.perf_counter() - start)
        g = greedy(jobs, sites)
        ratios.append(p.cost / g.cost)
        optimal_ratios.append(p.cost / best.cost)
        statuses.append(p.status)
        print(f"repeat {seed}: solve {times[-1]:.3f} s ({p.status}), exact {exact_times[-1]:.3f} s; plan "
              f"{p.cost:.2f}, optimum {best.cost:.2f}, greedy {g.cost:.2f} (plan/greedy {ratios[-1]:.4f})")
    result = {
        "benchmark": "planner", "sites": a.sites, "jobs": a.jobs, "repeats": a.repeats,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "solve_s": {"median": round(statistics.median(times), 4), "min": round(min(times), 4),
                    "max": round(max(times), 4), "target": 1.0},
        "solve_exact_s": {"median": round(statistics.median(exact_times), 4), "min": round(min(exact_times), 4),
                          "max": round(max(exact_times), 4)},
        "cost_vs_optimum": {"median": round(statistics.median(optimal_ratios), 4),
                            "max": round(max(optimal_ratios), 4)},
        "cost_vs_greedy": {"median": round(statistics.median(ratios), 4), "min": round(min(ratios), 4),
                           "max": round(max(ratios), 4)},
        "status": statuses, "time_limit_s": a.time_limit,
        "fallbacks": sum(s.startswith("time limit") for s in statuses),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
