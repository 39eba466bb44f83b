import pytest

from lepton_lab.cluster.placement import Job, SiteCapacity, plan
from lepton_lab.errors import ConfigError

GiB = 2**30
SITES = [
    SiteCapacity("cloud", "cloud", threads=8, memory=32 * GiB, gpus=1, cost_per_thread_hour=0.5),
    SiteCapacity("edge-hospital-a", "edge", threads=2, memory=4 * GiB, gpus=0, cost_per_thread_hour=0.05),
    SiteCapacity("edge-branch-b", "edge", threads=2, memory=4 * GiB, gpus=0, cost_per_thread_hour=0.05),
]


def test_cheapest_site_that_fits():
    p = plan([Job("etl", threads=2, memory=GiB)], SITES)
    assert p.placement["etl"] in ("edge-hospital-a", "edge-branch-b")
    assert p.cost == pytest.approx(0.1)
    assert p.resources("etl") == {p.placement["etl"]: 1}


def test_gpu_job_goes_to_the_gpu_site():
    p = plan([Job("cnn", threads=2, gpus=1)], SITES)
    assert p.placement == {"cnn": "cloud"}


def test_data_that_may_not_move_pins_the_job():
    p = plan([Job("fit-a", threads=1, data_site="edge-hospital-a", data_moves=False)], SITES)
    assert p.placement == {"fit-a": "edge-hospital-a"} and p.moved_gb == 0


def test_capacity_spreads_jobs_and_moving_data_costs():
    jobs = [Job(f"j{i}", threads=2, data_site="edge-hospital-a", data_gb=0.5) for i in range(3)]
    p = plan(jobs, SITES, move_penalty_per_gb=1.0)
    sites = sorted(p.placement.values())
    assert sites.count("edge-hospital-a") == 1  # only 2 threads there
    assert p.moved_gb == pytest.approx(1.0)


def test_job_that_fits_nowhere_is_named():
    with pytest.raises(ConfigError, match="job huge .* does not fit on any site"):
        plan([Job("huge", threads=64)], SITES)
    with pytest.raises(ConfigError, match="its data may not move"):
        plan([Job("pinned", gpus=1, data_site="edge-branch-b", data_moves=False)], SITES)
    with pytest.raises(ConfigError, match="do not fit together"):
        plan([Job("a", threads=6), Job("b", threads=6)], SITES[:1])
