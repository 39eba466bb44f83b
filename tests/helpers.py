"""Helpers shared by the test modules."""

from __future__ import annotations

import time
import types
from types import SimpleNamespace

import psutil


def dask_children() -> list[psutil.Process]:
    """Child processes of this test run that are Dask workers or nannies."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "resource_tracker" in cmd:
            continue  # multiprocessing's helper lives as long as this process, by design
        if "multiprocessing" in cmd or "lepton_lab.cli" in cmd or "distributed" in cmd:
            out.append(p)
    return out


def wait_no_dask_children(timeout: float = 15.0) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    left = dask_children()
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = dask_children()
    return left


def fake_nvml(n: int, fail_init: bool = False):
    m = types.ModuleType("pynvml")
    state = {"init": 0, "shutdown": 0}

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        state["init"] += 1

    m.nvmlInit = init
    m.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: n
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: f"Fake A100 #{h}".encode()
    m.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=40 * 2**30, used=2**30 * h)
    m.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=10.0 * h)
    m.state = state
    return m


def _worker_view(dask_scheduler) -> dict[str, tuple[float, int, str]]:
    now = time.time()
    return {str(ws.name): (now - ws.last_seen, len(ws.processing), ws.status.name)
            for ws in dask_scheduler.workers.values()}


def cluster_is_healthy(handle, names: set[str], timeout: float = 30.0, stale: float = 10.0) -> bool:
    """Whether the cluster has exactly the workers ``names``, all running, heartbeating and idle,
    waiting up to ``timeout`` seconds for it (a killed worker's nanny brings it back)."""
    end = time.monotonic() + timeout
    while True:
        try:
            view = handle.client.run_on_scheduler(_worker_view)
        except Exception:
            return False
        if set(view) == names and all(age < stale and not busy and status == "running"
                                      for age, busy, status in view.values()):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.25)


def checked_cluster(slot: dict, name: str, names: set[str], **up_kwargs):
    """The cluster kept in ``slot`` (a module-scoped dict), rebuilt when a test left it damaged."""
    import lepton_lab

    handle = slot.get("handle")
    if handle is not None and not handle.closed and cluster_is_healthy(handle, names):
        return handle
    if handle is not None:
        try:
            lepton_lab.down(name)
        except Exception:
            pass
    slot["handle"] = lepton_lab.up(name=name, **up_kwargs)
    return slot["handle"]
