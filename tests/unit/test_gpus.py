"""GPU selection with a fake NVML (this machine has no GPU)."""

import os
import sys

import pytest

from lepton_lab.cluster import gpus
from lepton_lab.cluster.profiles import BUILTIN, SiteSpec
from lepton_lab.cluster.workers import CPUAffinity, plan_site, worker_spec
from lepton_lab.errors import NoGPUError
from tests import fake_gpu
from tests.helpers import fake_nvml


@pytest.fixture
def nvml(monkeypatch):
    def install(n, **kw):
        m = fake_nvml(n, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", m)
        return m
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


def test_real_machine_has_no_gpu():
    # This machine has no NVIDIA driver: discovery answers [] instead of failing.
    assert gpus.discover() == []


def test_discovery_reads_nvml(nvml):
    m = nvml(2)
    found = gpus.discover(with_usage=True)
    assert [g.index for g in found] == [0, 1]
    assert found[1].name == "Fake A100 #1" and found[1].memory_total == 40 * 2**30
    assert found[1].utilization == 10.0
    assert m.state["shutdown"] == 1


def test_cuda_visible_devices_limits_discovery(nvml, monkeypatch):
    nvml(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [g.index for g in gpus.discover()] == [2, 3]


def test_broken_nvml_means_no_gpu(nvml):
    nvml(2, fail_init=True)
    assert gpus.discover() == []


def test_auto_takes_every_gpu_one_worker_each(nvml):
    nvml(2)
    site = BUILTIN["hybrid"].site("cloud")
    plans = plan_site(site, gpus.discover())
    assert [(p.name, p.gpu.index, p.resources.get("GPU")) for p in plans] == [("cloud-0", 0, 1), ("cloud-1", 1, 1)]


def test_auto_on_cpu_machine_falls_back_to_cpu_workers(nvml):
    nvml(0)
    plans = plan_site(BUILTIN["hybrid"].site("cloud"), gpus.discover())
    assert len(plans) == 1 and plans[0].gpu is None and "GPU" not in plans[0].resources


def test_explicit_gpus_on_cpu_machine_is_a_clear_error(nvml):
    nvml(0)
    site = SiteSpec("cloud", "cloud", workers=1, gpus=1)
    with pytest.raises(NoGPUError, match="^no GPU found on this machine"):
        plan_site(site, gpus.discover())


def test_more_gpus_than_present(nvml):
    nvml(1)
    with pytest.raises(NoGPUError, match="asks for 2 GPUs but this machine has 1"):
        plan_site(SiteSpec("cloud", "cloud", workers=1, gpus=2), gpus.discover())


# -- 8 GPUs, some hidden, named by index, UUID or MIG instance ----------------------------------



@pytest.fixture
def eight(monkeypatch):
    """A fake 8-GPU machine (GPU 7 split into 3 MIG instances) and CUDA_VISIBLE_DEVICES unset."""
    m = fake_gpu.fake_nvml(8, mig={7: 3})
    monkeypatch.setitem(sys.modules, "pynvml", m)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return m


def test_numeric_visible_devices_keep_nvml_indices_and_uuids(eight, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    found = gpus.discover()
    assert [(g.index, g.device, g.uuid, g.mig) for g in found] == [
        (i, str(i), fake_gpu.gpu_uuid(i), False) for i in (4, 5, 6)]
    assert found[0].cpus == (4 % (os.cpu_count() or 1),)


def test_uuid_visible_devices_map_to_their_gpus(eight, monkeypatch):
    # A unique prefix is enough, as for CUDA; the full UUID is what workers are given.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{fake_gpu.gpu_uuid(6)},{fake_gpu.gpu_uuid(2)[:12]}")
    found = gpus.discover()
    assert [(g.index, g.device) for g in found] == [(6, fake_gpu.gpu_uuid(6)), (2, fake_gpu.gpu_uuid(2))]


def test_mig_visible_devices_map_to_instances_of_their_parent(eight, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{fake_gpu.mig_uuid(7, 2)},{fake_gpu.mig_uuid(7, 0)}")
    found = gpus.discover(with_usage=True)
    assert [(g.index, g.uuid, g.mig) for g in found] == [
        (7, fake_gpu.mig_uuid(7, 2), True), (7, fake_gpu.mig_uuid(7, 0), True)]
    assert found[0].memory_total == 5 * 2**30 and found[0].utilization is None
    assert found[0].cpus == (7 % (os.cpu_count() or 1),)  # the parent board's affinity


def test_unset_shows_whole_gpus_and_mig_instances_instead_of_their_gpu(eight):
    found = gpus.discover()
    assert [g.device for g in found] == [str(i) for i in range(7)] + [fake_gpu.mig_uuid(7, s) for s in range(3)]
    assert len({g.key for g in found}) == 10


def test_an_entry_naming_no_device_hides_the_rest_as_cuda_does(eight, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-ffffffff,1")
    assert [g.index for g in gpus.discover()] == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "9,1")
    assert gpus.discover() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.discover() == []


def test_worker_specs_match_dask_cuda_keyed_by_device_id(eight, monkeypatch, tmp_path):
    """Every GPU worker gets what dask-cuda's worker_spec gives *that device id*, built without calling it."""
    fake_gpu.install_fake_dask_cuda(tmp_path, monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    before = fake_gpu.cuda_modules_loaded()
    found = gpus.discover()
    plans = plan_site(SiteSpec("cloud", "cloud", workers=5, threads=2, gpus="auto"), found)
    specs = {p.name: worker_spec(p, {"host": "127.0.0.1"})["options"] for p in plans}
    # Nothing that can create a CUDA context was imported here, not even dask-cuda.
    assert fake_gpu.cuda_modules_loaded() == before
    assert [p.gpu.index if p.gpu else None for p in plans] == [4, 5, 6, 7, None]

    from dask_cuda.worker_spec import CALLS
    from dask_cuda.worker_spec import worker_spec as cuda_worker_spec

    reference = cuda_worker_spec(CUDA_VISIBLE_DEVICES=[4, 5, 6, 7], threads_per_worker=2)
    assert sorted(reference) == [4, 5, 6, 7]  # keyed by device id, as dask-cuda does
    assert CALLS and CALLS[0][0] == "initialize"  # which is why it is never called by Lepton
    for plan in plans[:4]:
        ours, theirs = specs[plan.name], reference[plan.gpu.index]["options"]
        assert ours["env"] == theirs["env"]
        assert ours["data"] is theirs["data"] is dict
        assert ours["preload"] == [theirs["preload"]] and ours["preload_argv"] == [[theirs["preload_argv"]]]
        assert ours["resources"]["GPU"] == 1 and ours["nthreads"] == 2
        (affinity,) = ours["plugins"]
        assert isinstance(affinity, CPUAffinity) and affinity.cores == plan.gpu.cpus
    assert "env" not in specs["cloud-4"] and "GPU" not in specs["cloud-4"]["resources"]


def test_uuid_and_mig_workers_see_only_what_their_site_holds(eight, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES",
                       ",".join([fake_gpu.gpu_uuid(1), fake_gpu.gpu_uuid(3), fake_gpu.mig_uuid(7, 1)]))
    found = gpus.discover()
    plans = plan_site(SiteSpec("cloud", "cloud", workers=3, gpus=3), found)
    env = [worker_spec(p, {})["options"]["env"]["CUDA_VISIBLE_DEVICES"] for p in plans]
    u1, u3, m71 = fake_gpu.gpu_uuid(1), fake_gpu.gpu_uuid(3), fake_gpu.mig_uuid(7, 1)
    # Whole GPUs rotate among the site's whole GPUs; a MIG instance is shown alone.
    assert env == [f"{u1},{u3}", f"{u3},{u1}", m71]
    two = plan_site(SiteSpec("cloud", "cloud", workers=2, gpus=2), found)
    assert [worker_spec(p, {})["options"]["env"]["CUDA_VISIBLE_DEVICES"] for p in two] == [f"{u1},{u3}", f"{u3},{u1}"]


def test_without_dask_cuda_gpu_workers_are_pinned_without_preload(eight, monkeypatch):
    monkeypatch.setattr(gpus, "dask_cuda_available", lambda: False)
    from lepton_lab.cluster import workers

    monkeypatch.setattr(workers, "dask_cuda_available", lambda: False)
    plan = plan_site(SiteSpec("cloud", "cloud", workers=1, gpus=1), gpus.discover())[0]
    options = worker_spec(plan, {"preload": ["site_check"], "preload_argv": ["--strict"]})["options"]
    assert options["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert options["preload"] == ["site_check"] and options["preload_argv"] == ["--strict"]


def test_gpu_preload_keeps_other_preloads_and_their_arguments(eight, monkeypatch, tmp_path):
    fake_gpu.install_fake_dask_cuda(tmp_path, monkeypatch)
    plan = plan_site(SiteSpec("cloud", "cloud", workers=1, gpus=1), gpus.discover())[0]
    options = worker_spec(plan, {"preload": ["site_check"], "preload_argv": ["--strict"]})["options"]
    assert options["preload"] == ["site_check", "dask_cuda.initialize"]
    assert options["preload_argv"] == [["--strict"], ["--create-cuda-context"]]


def test_cpu_affinity_plugin_pins_to_allowed_cores_only():
    allowed = os.sched_getaffinity(0)
    core = min(allowed)
    try:
        CPUAffinity((core, 10_000)).setup()
        assert os.sched_getaffinity(0) == {core}
        CPUAffinity((10_000,)).setup()  # none allowed: left as it was
        assert os.sched_getaffinity(0) == {core}
    finally:
        os.sched_setaffinity(0, allowed)
