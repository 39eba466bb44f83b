"""GPU selection with a fake NVML (this machine has no GPU)."""

import sys
import types

import pytest

from tests.helpers import fake_nvml

from lepton_lab.cluster import gpus
from lepton_lab.cluster.profiles import BUILTIN, SiteSpec
from lepton_lab.cluster.workers import plan_site, worker_spec
from lepton_lab.errors import NoGPUError


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
    assert [(p.name, p.gpu, p.resources.get("GPU")) for p in plans] == [("cloud-0", 0, 1), ("cloud-1", 1, 1)]


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


def test_gpu_workers_take_dask_cuda_spec(nvml, monkeypatch):
    """GPU workers get dask-cuda's recipe (rotated CUDA_VISIBLE_DEVICES); CPU ones never import it."""
    calls = []
    pkg = types.ModuleType("dask_cuda")
    mod = types.ModuleType("dask_cuda.worker_spec")

    def cuda_worker_spec(CUDA_VISIBLE_DEVICES, threads_per_worker=1, **kw):
        calls.append(list(CUDA_VISIBLE_DEVICES))
        devs = list(CUDA_VISIBLE_DEVICES)
        return {i: {"cls": object, "options": {"env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devs[i:] + devs[:i]))},
                                               "nthreads": threads_per_worker}} for i in range(len(devs))}

    mod.worker_spec = cuda_worker_spec
    pkg.worker_spec = mod
    monkeypatch.setitem(sys.modules, "dask_cuda", pkg)
    monkeypatch.setitem(sys.modules, "dask_cuda.worker_spec", mod)
    nvml(3)
    found = gpus.discover()
    plans = plan_site(SiteSpec("cloud", "cloud", workers=4, gpus="auto"), found)
    specs = [worker_spec(p, {"host": "127.0.0.1"}, [g.index for g in found]) for p in plans]
    assert [s["options"].get("env", {}).get("CUDA_VISIBLE_DEVICES") for s in specs] == ["0,1,2", "1,2,0", "2,0,1", None]
    assert [s["options"]["resources"].get("GPU") for s in specs] == [1, 1, 1, None]
    assert len(calls) == 3
