"""Verified bytes back to live models: XGBoost boosters and estimators, PyTorch modules.

The other half of :mod:`lepton_lab.registry.serialize`. Construction targets are
allow-listed (:mod:`.builders`) before anything is imported; PyTorch weights are
read with ``torch.load(weights_only=True)`` straight out of the decrypted buffer.
"""

from __future__ import annotations

import io
import itertools
import warnings
from typing import Any

from lepton_lab.errors import ConfigError, first_line
from lepton_lab.registry.builders import resolve_builder
from lepton_lab.registry.manifest import Manifest, Quantization


class _BufferReader(io.RawIOBase):
    """A read-only file over a buffer, without copying it (``io.BytesIO`` would).

    torch's zip reader reads each tensor's record straight into the tensor's
    storage through ``readinto``, so the payload is copied exactly once.
    """

    def __init__(self, buffer: bytes | bytearray | memoryview):
        self._view = memoryview(buffer).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._view.release()
        super().close()


def _torch_load(payload: bytes | bytearray, torch: Any) -> dict:
    """A state_dict from bytes, tensors only (``weights_only``): never arbitrary pickles."""
    with warnings.catch_warnings(), _BufferReader(payload) as reader:
        # torch's own loader of quantized packed params uses TypedStorage internally.
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return torch.load(reader, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ loading


def deserialize(payload: bytes | bytearray, manifest: Manifest) -> Any:
    """The live object for verified ``payload``: a Booster or estimator, an nn.Module, or
    for framework ``"bytes"`` the payload itself (a ``bytearray``: copying a large
    artifact into ``bytes`` would cost as much time as decrypting it).

    Only call this once the payload's signature and tags have been verified.
    """
    if manifest.framework == "bytes":
        return payload if isinstance(payload, bytearray) else bytearray(payload)
    if manifest.framework == "xgboost":
        return _load_xgboost(payload, manifest)
    if manifest.framework == "torch":
        return _load_torch(payload, manifest)
    raise ConfigError(
        f"unknown framework {manifest.framework!r} in {manifest.ref}; upgrade Lepton Lab"
    )


def _load_xgboost(payload: bytes | bytearray, manifest: Manifest) -> Any:
    import xgboost as xgb

    raw = payload if isinstance(payload, bytearray) else bytearray(payload)
    if manifest.construction is None:
        booster = xgb.Booster()
        booster.load_model(raw)
        return booster
    cls = resolve_builder(manifest.construction.target, "xgboost")
    model = cls(**manifest.construction.kwargs)
    model.load_model(raw)
    return model


def _load_torch(payload: bytes | bytearray, manifest: Manifest) -> Any:
    import torch

    spec = manifest.construction
    if spec is None:
        raise ConfigError(f"{manifest.ref} has no construction spec; it cannot be rebuilt")
    build = resolve_builder(spec.target, "torch")  # allow-listed before anything is imported
    is_class = isinstance(build, type) and issubclass(build, torch.nn.Module)
    state = _torch_load(payload, torch)
    module = None
    if is_class and spec.quantization is None:
        module = _build_on_meta(build, spec.kwargs, state, torch, manifest)
    if module is None:
        module = build(**spec.kwargs)
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"{spec.target} did not build a torch.nn.Module")
        if spec.quantization is not None:
            module = _requantize(module, spec.quantization, torch)
        _load_weights(module, state, manifest, assign=False)
    return module.eval()


def _load_weights(module: Any, state: dict, manifest: Manifest, *, assign: bool) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as err:
        target = manifest.construction.target if manifest.construction else "its class"
        raise ConfigError(f"weights of {manifest.ref} do not fit {target}: {first_line(err)}") from None


def _build_on_meta(cls: type, kwargs: dict, state: dict, torch: Any, manifest: Manifest) -> Any:
    """``cls(**kwargs)`` built on the meta device, the loaded tensors becoming its weights.

    No memory is allocated or initialised for weights that are replaced at once,
    and none is copied. None when that cannot be done for this class (its
    constructor computes with tensors, or it keeps state outside its
    ``state_dict``): the caller then builds it the ordinary way.
    """
    try:
        with torch.device("meta"):
            module = cls(**kwargs)
    except Exception:
        return None
    if not isinstance(module, torch.nn.Module):
        return None
    shared: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    _load_weights(module, state, manifest, assign=True)
    # Assigning gives each name its own Parameter: tie the ones the class ties again.
    for names in (n for n in shared.values() if len(n) > 1):
        first = module.get_parameter(names[0])
        for other in names[1:]:
            owner, _, attr = other.rpartition(".")
            setattr(module.get_submodule(owner), attr, first)
    if any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers())):
        return None  # a non-persistent buffer: only a real build fills it in
    return module


def _requantize(module: Any, quantization: Quantization, torch: Any) -> Any:
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float16_dynamic_qconfig,
        quantize_dynamic,
    )

    if quantization.method != "dynamic" or quantization.dtype not in ("qint8", "float16"):
        raise ConfigError(f"unsupported quantization {quantization.method}/{quantization.dtype}")
    qconfig = default_dynamic_qconfig if quantization.dtype == "qint8" else float16_dynamic_qconfig
    dtype = torch.qint8 if quantization.dtype == "qint8" else torch.float16
    # Names, not types: exactly the layers that were quantized at publish time.
    spec = {name: qconfig for name in quantization.modules}
    return quantize_dynamic(module, spec, dtype=dtype)


__all__ = ["deserialize"]
