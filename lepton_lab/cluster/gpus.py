"""GPU discovery through NVML (``nvidia-ml-py``, the ``gpu`` extra).

On a machine without NVIDIA GPUs, without the driver, or without ``nvidia-ml-py``
every function here answers "no GPUs" instead of failing: a CPU laptop is a
normal place to run Lepton Lab. dask-cuda is never imported here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GPU:
    """One GPU as NVML reports it."""

    index: int
    name: str
    uuid: str
    memory_total: int
    memory_used: int | None = None
    utilization: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nvml() -> Any | None:
    """The ``pynvml`` module, initialised, or None when NVML is not usable here.

    Looked up in ``sys.modules`` each time so tests can put a fake NVML in its place.
    """
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... all mean "no GPU here"
        return None
    return nvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible(count: int) -> list[int]:
    """Indices allowed by ``CUDA_VISIBLE_DEVICES`` (all when unset)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(count))
    out = []
    for part in raw.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < count:
            out.append(int(part))
    return out


def discover(with_usage: bool = False) -> list[GPU]:
    """The GPUs this process may use; ``[]`` on a CPU machine.

    ``with_usage`` adds current memory use and utilisation (one NVML call each).
    """
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        count = nvml.nvmlDeviceGetCount()
        gpus = []
        for i in _visible(count):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            used = util = None
            if with_usage:
                used = int(mem.used)
                util = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            gpus.append(
                GPU(i, _text(nvml.nvmlDeviceGetName(h)), _text(nvml.nvmlDeviceGetUUID(h)),
                    int(mem.total), used, util)
            )
        return gpus
    except Exception:
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def count() -> int:
    """How many GPUs NVML shows to this process."""
    return len(discover())


def dask_cuda_available() -> bool:
    """True when ``dask_cuda`` can be imported (it is only imported when GPU workers start)."""
    return importlib.util.find_spec("dask_cuda") is not None
