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
