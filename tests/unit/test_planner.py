"""The placement planner: the MILP against brute force, a large fleet, and ``choose`` on live-like snapshots."""

import itertools
import random

import pytest

from lepton_lab.cluster.allocation import Snapshot, Totals, WorkerAllocation
from lepton_lab.cluster.placement import Job, JobRequest, SiteCapacity, choose, greedy, plan
from lepton_lab.cluster.profiles import get_profile
from lepton_lab.errors import ConfigError

GiB = 2**30


def _random_case(seed: int, n_sites: int, n_jobs: int):
    rng = random.Random(seed)
    sites = [SiteCapacity(f"s{i}", "cloud" if i == 0 else "edge", threads=rng.randint(2, 6),
                          memory=rng.randint(2, 8) * GiB, gpus=rng.randint(0, 1),
                          cost_per_thread_hour=rng.choice([0.05, 0.1, 0.5, 1.0, 2.5])) for i in range(n_sites)]
    jobs = []
    for j in range(n_jobs):
        data = rng.choice([None, *[s.name for s in sites]])
        jobs.append(Job(f"j{j}", threads=rng.randint(1, 3), memory=rng.randint(0, 3) * GiB,
                        gpus=int(rng.random() < 0.2), hours=rng.choice([0.5, 1.0, 2.0]), data_site=data,
                        data_gb=rng.choice([0.0, 0.5, 2.0]) if data else 0.0,
                        data_moves=rng.random() < 0.7))
    return jobs, sites


def _brute_force(jobs, sites, penalty=1.0):
    best = None
    for combo in itertools.product(range(len(sites)), repeat=len(jobs)):
        used = [[0, 0, 0] for _ in sites]
        cost = 0.0
        ok = True
        for job, s in zip(jobs, combo):
            site = sites[s]
            if job.data_site and not job.data_moves and site.name != job.data_site:
                ok = False
                break
            used[s][0] += job.threads
            used[s][1] += job.memory
            used[s][2] += job.gpus
            moved = job.data_gb if job.data_site and job.data_site != site.name else 0.0
            cost += job.threads * job.hours * site.cost_per_thread_hour + penalty * moved
        if ok and all(u[0] <= s.threads and u[1] <= s.memory and u[2] <= s.gpus for u, s in zip(used, sites)):
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_milp_matches_brute_force_on_small_fleets(seed):
    jobs, sites = _random_case(seed, 3, 4)
    best = _brute_force(jobs, sites)
    if best is None:
        with pytest.raises(ConfigError):
            plan(jobs, sites)
        return
    p = plan(jobs, sites)
    assert p.cost == pytest.approx(best, abs=1e-6)
    # The placement it returns is feasible and costs what it says.
    for s in sites:
        mine = [j for j in jobs if p.placement[j.name] == s.name]
        assert sum(j.threads for j in mine) <= s.threads and sum(j.gpus for j in mine) <= s.gpus
        assert sum(j.memory for j in mine) <= s.memory
    assert all(p.placement[j.name] == j.data_site for j in jobs if j.data_site and not j.data_moves)


def test_some_small_cases_are_infeasible_and_some_are_not():
    outcomes = {_brute_force(*_random_case(seed, 3, 4)) is None for seed in range(12)}
    assert outcomes == {True, False}  # the comparison above covers both branches


def test_a_fleet_of_50_sites_and_500_jobs_is_solved_and_beats_or_ties_greedy():
    rng = random.Random(7)
    sites = [SiteCapacity(f"site-{i}", "cloud" if i < 5 else "edge", threads=rng.randint(24, 48),
                          memory=64 * GiB, gpus=rng.randint(2, 4) if i < 5 else 0,
                          cost_per_thread_hour=round(rng.uniform(0.05, 3.0), 2)) for i in range(50)]
    jobs = [Job(f"job-{j}", threads=rng.randint(1, 4), memory=rng.randint(0, 2) * GiB,
                gpus=int(rng.random() < 0.01), hours=rng.choice([0.5, 1, 2]),
                data_site=rng.choice([None, f"site-{rng.randrange(50)}"]), data_gb=rng.choice([0.0, 1.0]))
            for j in range(500)]
    p = plan(jobs, sites, time_limit=60)
    assert len(p.placement) == 500
    g = greedy(jobs, sites)
    assert p.cost <= g.cost + 1e-6
    for s in sites:
        assert sum(j.threads for j in jobs if p.placement[j.name] == s.name) <= s.threads


# --------------------------------------------------------------------------- choose on a snapshot


def _worker(site: str, kind: str, i: int, *, busy: int = 0, gpu: bool = False, memory: int = 4 * GiB,
            cost: float = 0.0) -> WorkerAllocation:
    resources = {site: 1.0, kind: 1.0, **({"GPU": 1.0} if gpu else {})}
    return WorkerAllocation(f"{site}-{i}", f"tcp://10.0.0.{i}:1", site, kind, 1, 0, memory, 0.0, [], busy,
                            resources, {"GPU": 1.0} if gpu and busy else {}, {}, cost)


def _snapshot(*workers: WorkerAllocation) -> Snapshot:
    return Snapshot("test", 0.0, "tcp://x:1", list(workers), [], [], Totals())


HYBRID = _snapshot(_worker("cloud", "cloud", 0, gpu=True), _worker("cloud", "cloud", 1),
                   _worker("edge-hospital-a", "edge", 0), _worker("edge-branch-b", "edge", 0))


def test_train_goes_to_the_cheapest_site_that_fits():
    profile = get_profile("hybrid")  # cloud 2.48, edges 0.12 per worker-hour
    c = choose(JobRequest("train"), HYBRID, profile)
    assert c.site in ("edge-hospital-a", "edge-branch-b") and c.cost_per_hour == pytest.approx(0.12)
    assert c.line().startswith("planner: train on edge-") and "\n" not in c.line()
    two = choose(JobRequest("train", workers=2), HYBRID, profile)
    assert two.sites == ["cloud"] and two.cost_per_hour == pytest.approx(4.96)


def test_equal_costs_prefer_cloud():
    assert choose(JobRequest("train"), HYBRID).site == "cloud"


def test_gpus_and_data_locality():
    profile = get_profile("hybrid")
    c = choose(JobRequest("train", gpus=1, data_site="edge-hospital-a", data_gb=2.0), HYBRID, profile)
    assert c.site == "cloud" and c.data_local is False and c.moved_gb == 2.0
    assert "data moves off edge-hospital-a" in c.line()
    pinned = choose(JobRequest("train", data_site="edge-hospital-a", data_moves=False), HYBRID, profile)
    assert pinned.sites == ["edge-hospital-a"] and pinned.data_local is True
    assert any("may not move" in w for w in pinned.why)


@pytest.mark.parametrize("request_, match", [
    (JobRequest("train", workers=4), "capacity: train takes 4 workers on one site but the largest site, cloud, has 2"),
    (JobRequest("train", workers=2, gpus=2), "GPUs: train takes 2 GPU workers on one site but cloud has 1"),
    (JobRequest("train", gpus=1, data_site="edge-hospital-a", data_moves=False),
     "GPUs: .* the data's site edge-hospital-a has 0"),
    (JobRequest("train", data_site="edge-nowhere", data_moves=False), "data locality: the data stays on edge-nowhere"),
    (JobRequest("tune", workers=9), "capacity: tune takes 9 workers and the sites allowed have 4"),
    (JobRequest("serve", sites=("mars",)), "sites: the cluster has no site 'mars'"),
    (JobRequest("train", memory=64 * GiB), "memory: no worker"),
])
def test_impossible_requests_name_the_constraint_in_one_line(request_, match):
    with pytest.raises(ConfigError, match=match) as info:
        choose(request_, HYBRID, get_profile("hybrid"), free_gpus=2)
    assert "\n" not in str(info.value)


def test_ledger_free_gpus_are_named():
    with pytest.raises(ConfigError, match="the GPU ledger has 3 free GPUs"):
        choose(JobRequest("train", workers=2, gpus=2), HYBRID, free_gpus=3)


def test_busy_workers_make_the_job_wait_or_move():
    busy = _snapshot(_worker("cloud", "cloud", 0, busy=1), _worker("edge-a", "edge", 0))
    c = choose(JobRequest("train"), busy)
    assert c.site == "edge-a" and not c.waits  # the idle site wins over the busy, equally priced one
    all_busy = _snapshot(_worker("cloud", "cloud", 0, busy=1))
    w = choose(JobRequest("train"), all_busy)
    assert w.site == "cloud" and w.waits and "waits for busy workers" in w.line()


def test_federate_takes_one_worker_on_every_edge_site_and_tune_spreads():
    profile = get_profile("hybrid")
    f = choose(JobRequest("federate"), HYBRID, profile)
    assert sorted(f.sites) == ["edge-branch-b", "edge-hospital-a"] and f.cost_per_hour == pytest.approx(0.24)
    t = choose(JobRequest("tune", workers=4), HYBRID, profile)
    assert t.workers == 4 and set(t.sites) == {"cloud", "edge-hospital-a", "edge-branch-b"}
    assert t.cost_per_hour == pytest.approx(2 * 2.48 + 2 * 0.12)
    t2 = choose(JobRequest("tune", workers=2), HYBRID, profile)
    assert sorted(t2.sites) == ["edge-branch-b", "edge-hospital-a"]


def test_bad_requests_are_config_errors():
    for bad in (JobRequest("sing"), JobRequest(workers=0), JobRequest(gpus=3, workers=1), JobRequest(hours=-1)):
        with pytest.raises(ConfigError, match="^plan: "):
            choose(bad, HYBRID)
