"""GPU discovery through NVML (``nvidia-ml-py``, the ``gpu`` extra).

On a machine without NVIDIA GPUs, without the driver, or without ``nvidia-ml-py``
every function here answers "no GPUs" instead of failing: a CPU laptop is a
normal place to run Lepton Lab. dask-cuda is never imported here.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GPU:
    """One GPU (or one MIG instance of a GPU) as NVML reports it.

    ``index`` is the NVML index of the physical GPU (of the parent GPU for a MIG
    instance); ``device`` is how ``CUDA_VISIBLE_DEVICES`` names it for a worker
    (an index, a ``GPU-`` UUID or a ``MIG-`` UUID); ``uuid`` names it for good
    and is what the GPU ledger counts; ``cpus`` are the CPU cores NVML says sit
    closest to it (empty when unknown).
    """

    index: int
    name: str
    uuid: str
    memory_total: int
    memory_used: int | None = None
    utilization: float | None = None
    device: str = ""
    mig: bool = False
    cpus: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """What identifies this device on its machine: its UUID (its index if NVML gave none)."""
        return self.uuid or f"index-{self.index}"

    @property
    def visible_as(self) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` entry that makes a process see this device."""
        return self.device or str(self.index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nvml() -> Any | None:
    """The ``pynvml`` module, initialised, or None when NVML is not usable here.

    Looked up in ``sys.modules`` each time so tests can put a fake NVML in its place.
    NVML only reads the driver's view of the devices: it never creates a CUDA context.
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


@dataclass(frozen=True)
class _Device:
    index: int  # NVML index of the physical GPU
    uuid: str
    handle: Any  # the handle whose name and memory describe this device
    parent: Any  # the physical GPU's handle (CPU affinity is a property of the board)
    mig: bool


def _mig_devices(nvml: Any, index: int, handle: Any) -> list[_Device]:
    """The MIG instances of a GPU in MIG mode; ``[]`` for a GPU that is not (or cannot be)."""
    try:
        if not nvml.nvmlDeviceGetMigMode(handle)[0]:
            return []
        slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    except Exception:  # no MIG support on this board or in this NVML binding
        return []
    out = []
    for slot in range(slots):
        try:
            mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except Exception:  # an empty slot
            continue
        out.append(_Device(index, _text(nvml.nvmlDeviceGetUUID(mh)), mh, handle, True))
    return out


def _all_devices(nvml: Any) -> tuple[list[_Device], list[_Device]]:
    """(whole GPUs, MIG instances) on this machine, in NVML order."""
    whole, migs = [], []
    for i in range(int(nvml.nvmlDeviceGetCount())):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        whole.append(_Device(i, _text(nvml.nvmlDeviceGetUUID(h)), h, h, False))
        migs += _mig_devices(nvml, i, h)
    return whole, migs


def _by_prefix(devices: list[_Device], entry: str) -> _Device | None:
    matches = [d for d in devices if d.uuid.lower().startswith(entry.lower())]
    return matches[0] if len(matches) == 1 else None


def _visible(nvml: Any) -> list[tuple[str, _Device]]:
    """The devices ``CUDA_VISIBLE_DEVICES`` lets this process use, each with its entry.

    Entries are read as CUDA reads them: an index, a ``GPU-`` UUID or a ``MIG-``
    UUID (a unique prefix is enough), and the first entry that names no device
    hides itself and every entry after it. Unset, every GPU is visible, and a GPU
    in MIG mode shows its MIG instances instead of itself.
    """
    whole, migs = _all_devices(nvml)
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        out = []
        for d in whole:
            own = [m for m in migs if m.index == d.index]
            out += [(m.uuid, m) for m in own] if own else [(str(d.index), d)]
        return out
    out, seen = [], set()
    for part in raw.split(","):
        entry = part.strip()
        if entry.isdigit():
            dev = whole[int(entry)] if int(entry) < len(whole) else None
            entry = str(int(entry)) if dev is not None else entry
        elif entry[:4].upper() == "GPU-":
            dev = _by_prefix(whole, entry)
        elif entry[:4].upper() == "MIG-":
            dev = _by_prefix(migs, entry)
        else:
            dev = None
        if dev is None or dev.uuid in seen:
            break
        seen.add(dev.uuid)
        out.append((entry if entry.isdigit() else dev.uuid, dev))
    return out


def _unpack_cpus(masks: Any, bits: int = 64) -> tuple[int, ...]:
    """CPU numbers set in NVML's affinity bitmasks (64 CPUs per word)."""
    return tuple(word * bits + b for word, mask in enumerate(masks) for b in range(bits)
                 if int(mask) >> b & 1)


def _cpu_affinity(nvml: Any, handle: Any) -> tuple[int, ...]:
    try:
        return _unpack_cpus(nvml.nvmlDeviceGetCpuAffinity(handle, math.ceil((os.cpu_count() or 1) / 64)))
    except Exception:  # not reported (VMs, old drivers): no pinning
        return ()


def discover(with_usage: bool = False) -> list[GPU]:
    """The GPUs (and MIG instances) this process may use; ``[]`` on a CPU machine.

    ``with_usage`` adds current memory use and utilisation (one NVML call each;
    a MIG instance reports no utilisation).
    """
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        gpus = []
        for entry, d in _visible(nvml):
            mem = nvml.nvmlDeviceGetMemoryInfo(d.handle)
            used = util = None
            if with_usage:
                used = int(mem.used)
                try:
                    util = float(nvml.nvmlDeviceGetUtilizationRates(d.handle).gpu)
                except Exception:
                    util = None
            gpus.append(
                GPU(d.index, _text(nvml.nvmlDeviceGetName(d.handle)), d.uuid, int(mem.total), used, util,
                    device=entry, mig=d.mig, cpus=_cpu_affinity(nvml, d.parent))
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
    if "dask_cuda" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("dask_cuda") is not None
    except (ImportError, ValueError):
        return False
