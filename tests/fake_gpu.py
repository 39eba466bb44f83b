"""A fake NVML with UUIDs, MIG instances and CPU affinity, and a fake dask-cuda on disk.

The fake dask-cuda has the real one's shapes: ``worker_spec.worker_spec(...)``
returns specs keyed by device id (and, like the real one, would initialise CUDA
in the calling process, which it records), and ``dask_cuda.initialize`` is a
worker preload that records, in the worker, the device it made its context on.
"""

from __future__ import annotations

import os
import sys
import textwrap
import types
from pathlib import Path
from types import SimpleNamespace


class NVMLError(Exception):
    pass


def gpu_uuid(i: int) -> str:
    return f"GPU-{i:08x}-1111-2222-3333-{i:012x}"


def mig_uuid(i: int, slot: int) -> str:
    return f"MIG-{i:02x}{slot:06x}-4444-5555-6666-{i * 16 + slot:012x}"


def fake_nvml(n: int = 8, mig: dict[int, int] | None = None) -> types.ModuleType:
    """``n`` GPUs; ``mig`` maps a GPU index to how many MIG instances it is split into.

    GPU ``i`` sits next to CPU core ``i % cpu_count`` (NVML's affinity bitmask).
    """
    mig = mig or {}
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.state = {"init": 0, "shutdown": 0}
    gpus = [SimpleNamespace(index=i, uuid=gpu_uuid(i), mig=False, parent=None) for i in range(n)]
    migs = {i: [SimpleNamespace(index=i, uuid=mig_uuid(i, s), mig=True, parent=gpus[i]) for s in range(k)]
            for i, k in mig.items()}

    def init():
        m.state["init"] += 1

    def by_index(i):
        if not 0 <= i < n:
            raise NVMLError("Invalid Argument")
        return gpus[i]

    def mig_by_index(h, slot):
        own = migs.get(h.index, [])
        if slot >= len(own):
            raise NVMLError("Not Found")
        return own[slot]

    def by_uuid(uuid):
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for h in gpus + [x for v in migs.values() for x in v]:
            if h.uuid == uuid:
                return h
        raise NVMLError("Not Found")

    def utilization(h):
        if h.mig:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=10.0 * h.index, memory=0.0)

    def affinity(h, words):
        assert not h.mig, "affinity is asked of the physical GPU"
        core = h.index % (os.cpu_count() or 1)
        return [1 << core] + [0] * (words - 1)

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.state.__setitem__("shutdown", m.state["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: n
    m.nvmlDeviceGetHandleByIndex = by_index
    m.nvmlDeviceGetHandleByUUID = by_uuid
    m.nvmlDeviceGetUUID = lambda h: h.uuid
    m.nvmlDeviceGetName = lambda h: (f"Fake A100 #{h.index}" + (" MIG 1g.5gb" if h.mig else "")).encode()
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=(5 if h.mig else 40) * 2**30, used=2**20)
    m.nvmlDeviceGetUtilizationRates = utilization
    m.nvmlDeviceGetMigMode = lambda h: (1, 1) if h.index in migs and not h.mig else (0, 0)
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7
    m.nvmlDeviceGetMigDeviceHandleByIndex = mig_by_index
    m.nvmlDeviceIsMigDeviceHandle = lambda h: h.mig
    m.nvmlDeviceGetDeviceHandleFromMigDeviceHandle = lambda h: h.parent
    m.nvmlDeviceGetCpuAffinity = affinity
    return m


_WORKER_SPEC = '''
import os

from distributed import Nanny

CALLS = []


def initialize(create_cuda_context=True, **kw):
    # The real one makes a CUDA context on the calling process's current device.
    CALLS.append(("initialize", os.getpid()))


def cuda_visible_devices(i, visible):
    visible = list(visible)
    return ",".join(map(str, visible[i:] + visible[:i]))


def worker_spec(interface=None, protocol=None, dashboard_address=":8787", threads_per_worker=1,
                silence_logs=True, CUDA_VISIBLE_DEVICES=None, **kwargs):
    if isinstance(CUDA_VISIBLE_DEVICES, str):
        CUDA_VISIBLE_DEVICES = CUDA_VISIBLE_DEVICES.split(",")
    CUDA_VISIBLE_DEVICES = list(map(int, CUDA_VISIBLE_DEVICES))
    initialize()
    spec = {}
    for i, dev in enumerate(CUDA_VISIBLE_DEVICES):
        spec[dev] = {
            "cls": Nanny,
            "options": {
                "env": {"CUDA_VISIBLE_DEVICES": cuda_visible_devices(i, CUDA_VISIBLE_DEVICES)},
                "interface": interface,
                "protocol": protocol,
                "nthreads": threads_per_worker,
                "data": dict,
                "dashboard_address": dashboard_address,
                "plugins": [],
                "silence_logs": silence_logs,
                "preload": "dask_cuda.initialize",
                "preload_argv": "--create-cuda-context",
            },
        }
    return spec
'''

_INITIALIZE = '''
import os

import click


@click.command()
@click.option("--create-cuda-context/--no-create-cuda-context", default=False)
def dask_setup(worker, create_cuda_context):
    if create_cuda_context:
        # Where the real preload makes its CUDA context: the first visible device, in the worker.
        os.environ["FAKE_CUDA_CONTEXT"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
'''


def install_fake_dask_cuda(root: Path, monkeypatch) -> Path:
    """Write the fake ``dask_cuda`` package under ``root`` and put it on ``sys.path``.

    Worker processes spawned afterwards inherit ``sys.path``, so they import it too.
    """
    pkg = root / "dask_cuda"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "worker_spec.py").write_text(textwrap.dedent(_WORKER_SPEC))
    (pkg / "initialize.py").write_text(textwrap.dedent(_INITIALIZE))
    monkeypatch.syspath_prepend(str(root))
    # Whatever of it gets imported during the test is forgotten afterwards (undo runs in reverse).
    for name in ("dask_cuda", "dask_cuda.worker_spec", "dask_cuda.initialize"):
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    return pkg


CUDA_MODULES = ("numba.cuda", "cupy", "torch.cuda", "cuda", "cuda.core", "pycuda", "rmm", "dask_cuda")


def cuda_modules_loaded() -> set[str]:
    """Modules whose import can create a CUDA context, and dask-cuda itself, now in ``sys.modules``."""
    return {name for name in sys.modules if name in CUDA_MODULES or name.startswith("dask_cuda.")}
