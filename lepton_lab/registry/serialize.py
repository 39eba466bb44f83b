"""Models to bytes in their framework's own format (:mod:`.restore` reads them back).

- XGBoost ``Booster``: UBJSON (``save_raw("ubj")``).
- XGBoost scikit-learn wrappers (``XGBClassifier`` ...): the booster as UBJSON
  plus the wrapper class and its non-default parameters.
- PyTorch ``nn.Module``: the ``state_dict`` via ``torch.save`` plus a
  construction spec (``module:qualname`` and constructor kwargs). A model made
  by :func:`lepton_lab.compress` from a plain chain of layers is rebuilt by
  ``lepton_lab.registry.modelspec:build_model`` from its layer spec instead. Whole
  modules are never pickled: loading uses ``torch.load(weights_only=True)``,
  reading the tensors straight out of the decrypted buffer, and builds the module
  on the meta device so the loaded tensors become its weights (no initialisation,
  no second copy).
  Dynamically quantized Linear layers are recorded and re-applied with
  ``quantize_dynamic`` on the rebuilt float module before loading weights.
- ``bytes`` or a file path: stored as they are (framework ``"bytes"``), loaded
  back as a ``bytearray``.
"""

from __future__ import annotations

import functools
import inspect
import io
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_lab.errors import ConfigError, first_line
from lepton_lab.registry.builders import allow_builder, resolve_builder
from lepton_lab.registry.manifest import Construction, Quantization, to_plain_json
from lepton_lab.registry.restore import _BufferReader as _BufferReader
from lepton_lab.registry.restore import _torch_load as _torch_load
from lepton_lab.registry.restore import deserialize as deserialize

#: Write ``bytes`` into a stream (the encrypting writer).
Writer = Any

_COPY_CHUNK = 4 * 1024 * 1024

# Parameters of the XGBoost wrappers that only matter while training and may
# hold Python callables; they are left out of the construction spec.
_XGB_TRAINING_ONLY = {"callbacks", "eval_metric", "early_stopping_rounds"}


@dataclass
class Serialized:
    """A model ready to be written: its format facts and a function that writes the bytes."""

    framework: str
    framework_version: str
    format: str
    suffix: str
    write: Callable[[Writer], None]
    construction: Construction | None = None

    def to_bytes(self) -> bytes:
        """The whole payload in memory, for a transport that cannot stream it."""
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()

    def facts(self) -> dict[str, Any]:
        """What :func:`from_payload` needs, besides the bytes, to make this again."""
        import dataclasses

        return {"framework": self.framework, "framework_version": self.framework_version, "format": self.format,
                "construction": dataclasses.asdict(self.construction) if self.construction else None}


def records_init_kwargs(cls: type) -> type:
    """Class decorator: instances remember their constructor arguments as ``init_kwargs``.

    The registry uses them to rebuild a PyTorch module before loading its
    weights, so publishing needs no ``init_kwargs=``.
    """
    init = cls.__init__  # type: ignore[misc]  # the class's own, replaced below
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self) is cls:  # a subclass has other arguments; it records its own
            bound = signature.bind(self, *args, **kwargs)
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    recorded[name] = value
            self.init_kwargs = recorded

    cls.__init__ = __init__  # type: ignore[misc]
    return allow_builder(cls)


def _loaded(module: str):
    """The module if this process already imported it; a framework is never imported to look."""
    return sys.modules.get(module)


def serialize(obj: Any, *, init_kwargs: dict[str, Any] | None = None) -> Serialized:
    """How to write ``obj`` in its native format; ConfigError if it cannot be stored safely."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = obj
        return Serialized("bytes", "", "bytes", ".bin", lambda w: w.write(data))
    if isinstance(obj, (str, os.PathLike)):
        return _file(Path(obj))
    xgb = _loaded("xgboost")
    if xgb is not None and isinstance(obj, xgb.Booster):
        return Serialized(
            "xgboost", xgb.__version__, "ubj", ".ubj", lambda w: w.write(obj.save_raw("ubj"))
        )
    if xgb is not None and isinstance(obj, xgb.XGBModel):
        return _xgb_wrapper(obj, xgb)
    torch = _loaded("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        return _torch_module(obj, init_kwargs, torch)
    raise ConfigError(
        f"cannot publish a {type(obj).__module__}.{type(obj).__qualname__}: pass an XGBoost "
        "Booster or estimator, a PyTorch nn.Module, bytes or a file path"
    )


def _file(path: Path) -> Serialized:
    if not path.is_file():
        raise ConfigError(f"no file at {path}; pass bytes to publish raw content")

    def write(w: Writer) -> None:
        with open(path, "rb") as handle:
            while block := handle.read(_COPY_CHUNK):
                w.write(block)

    return Serialized("bytes", "", "bytes", path.suffix or ".bin", write)


def _target(obj: type | Callable) -> str:
    """``module:qualname`` of a class or function, as :func:`resolve` reads it back."""
    return f"{obj.__module__}:{obj.__qualname__}"


def resolve(target: str, framework: str = "torch") -> Any:
    """The allowed builder named ``module:qualname`` (see :mod:`.builders`); ConfigError if not."""
    return resolve_builder(target, framework)


def _importable(target: str) -> Any:
    """The object at ``target`` if its module is already imported (None otherwise)."""
    module_name, _, qualname = target.partition(":")
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


# ------------------------------------------------------------------ XGBoost


def _xgb_wrapper(model: Any, xgb: Any) -> Serialized:
    if not model.__sklearn_is_fitted__():
        raise ConfigError(f"{type(model).__name__} is not fitted; call fit() before publishing")
    booster = model.get_booster()
    cls = type(model)
    defaults = cls().get_params(deep=False)
    kwargs: dict[str, Any] = {}
    for key, value in model.get_params(deep=False).items():
        if key in _XGB_TRAINING_ONLY or _same(value, defaults.get(key, object())):
            continue
        kwargs[key] = to_plain_json(value, f"{cls.__name__} parameter {key!r}")
    construction = Construction(target=_target(cls), kwargs=kwargs)
    return Serialized(
        "xgboost",
        xgb.__version__,
        "ubj",
        ".ubj",
        lambda w: w.write(booster.save_raw("ubj")),
        construction,
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ PyTorch


def _torch_module(module: Any, init_kwargs: dict[str, Any] | None, torch: Any) -> Serialized:
    spec = getattr(module, "lepton_spec", None)
    if spec is not None and init_kwargs is None:
        return _torch_from_spec(module, spec, torch)
    cls = type(module)
    target = _target(cls)
    if "<locals>" in cls.__qualname__:
        raise ConfigError(
            f"{cls.__qualname__} is defined inside a function; define it at module level "
            "so the registry can rebuild it"
        )
    allow_builder(cls)  # the live class is here already: rebuilding it imports nothing new
    if _importable(target) is not cls:
        raise ConfigError(
            f"{target} does not import as the class of this module; was it redefined?"
        )
    if init_kwargs is None:
        init_kwargs = getattr(module, "init_kwargs", None)
    if init_kwargs is not None and not isinstance(init_kwargs, dict):
        raise ConfigError("init_kwargs must be a dict of constructor keyword arguments")
    kwargs = to_plain_json(dict(init_kwargs or {}), f"constructor argument of {cls.__name__}")
    quantization = _dynamic_quantization(module, torch)
    _check_rebuild(module, cls, kwargs, quantization, torch)
    construction = Construction(target=target, kwargs=kwargs, quantization=quantization)

    def write(w: Writer) -> None:
        torch.save(module.state_dict(), w)

    return Serialized("torch", torch.__version__, "state_dict", ".pt", write, construction)


def _torch_from_spec(module: Any, spec: dict[str, Any], torch: Any) -> Serialized:
    """A compressed chain (``lepton_spec`` from :func:`lepton_lab.compress`): rebuilt by
    ``build_model(spec)``, which applies the same pruning widths and int8 quantization.

    The weights are round-tripped through a fresh build now, so a model that would
    not load is refused at publish time rather than at load time.
    """
    from lepton_lab.registry.modelspec import build_model

    kwargs = to_plain_json({"spec": spec}, "compressed model spec")
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    payload = buffer.getvalue()
    try:
        fresh = build_model(kwargs["spec"])
        # Taken before loading: int8 Linear layers accept packed weights of any shape.
        built = _shapes(fresh)
        fresh.load_state_dict(_torch_load(payload, torch), strict=True)
    except Exception as err:
        raise ConfigError(f"the compressed model does not rebuild from its spec: {first_line(err)}") from None
    if built != _shapes(module):
        raise ConfigError("the compressed model's layers differ from its spec; compress it again")
    construction = Construction(target=_target(build_model), kwargs=kwargs)
    return Serialized(
        "torch", torch.__version__, "state_dict", ".pt", lambda w: w.write(payload), construction
    )


def _shapes(m: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """State-dict entry -> tensor shape; for packed int8 Linear params, (weight, bias) shapes."""

    def shape(value: Any) -> tuple:
        if hasattr(value, "shape"):
            return tuple(value.shape)
        if isinstance(value, tuple):
            return tuple(shape(v) for v in value)
        return ()

    return {key: shape(value) for key, value in m.state_dict().items() if not key.startswith(skip)}


def _dynamic_quantization(module: Any, torch: Any) -> Quantization | None:
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    names, dtypes = [], set()
    for name, sub in module.named_modules():
        kind = type(sub).__module__
        if isinstance(sub, dynamic_linear):
            names.append(name)
            dtypes.add(str(sub._packed_params.dtype).replace("torch.", ""))
        elif kind.startswith(
            ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized")
        ):
            if type(sub).__name__ != "LinearPackedParams":
                raise ConfigError(
                    f"{name or 'the model'} is a {type(sub).__name__}: only dynamic int8/float16 "
                    "quantization of Linear layers (quantize_dynamic) is supported"
                )
    if not names:
        return None
    if len(dtypes) != 1 or not dtypes <= {"qint8", "float16"}:
        raise ConfigError(f"mixed or unsupported dynamic quantization dtypes {sorted(dtypes)}")
    return Quantization(
        method="dynamic", dtype=dtypes.pop(), modules=names, engine=torch.backends.quantized.engine
    )


def _check_rebuild(
    module: Any, cls: type, kwargs: dict, quantization: Quantization | None, torch: Any
) -> None:
    """Refuse now, not at load time, if ``cls(**kwargs)`` does not give the same structure.

    The module is built on the meta device, so this costs no memory for weights.
    """
    hint = "pass init_kwargs= or record them on the module (init_kwargs, @records_init_kwargs)"
    try:
        with torch.device("meta"):
            fresh = cls(**kwargs)
    except Exception as err:
        raise ConfigError(
            f"cannot rebuild {cls.__name__}(**{sorted(kwargs)}): {err}; {hint}"
        ) from None
    skip = tuple(f"{name}." for name in (quantization.modules if quantization else []))
    for name in quantization.modules if quantization else []:
        try:
            float_layer = fresh.get_submodule(name)
        except AttributeError:
            float_layer = None
        quantized = module.get_submodule(name)
        if not isinstance(float_layer, torch.nn.Linear) or (
            float_layer.in_features,
            float_layer.out_features,
        ) != (quantized.in_features, quantized.out_features):
            raise ConfigError(
                f"rebuilt {cls.__name__} has no Linear {name!r} matching the quantized one; {hint}"
            )

    if _shapes(fresh, skip) != _shapes(module, skip):
        raise ConfigError(
            f"{cls.__name__}(**{kwargs}) builds a different structure than the model "
            f"being published; {hint}"
        )


__all__ = ["Serialized", "deserialize", "records_init_kwargs", "resolve", "serialize"]


def from_payload(payload: bytes, *, framework: str, framework_version: str, format: str,
                 construction: dict[str, Any] | None = None) -> Serialized:
    """A :class:`Serialized` for bytes already in a framework's format (sent by a kernel)."""
    from .formats import check_facts, check_payload
    from .manifest import Construction, Quantization

    cons = None
    if construction:
        q = construction.get("quantization") if isinstance(construction, dict) else None
        try:
            cons = Construction(target=construction["target"], kwargs=dict(construction.get("kwargs") or {}),
                                quantization=Quantization(**q) if q else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"construction: {e}") from None
        cons.kwargs = to_plain_json(cons.kwargs, "construction kwargs")
    # The claim is checked against the bytes now: a mismatch is the publisher's error, not a reader's.
    check_facts(framework, format, cons)
    check_payload(payload, framework, format)
    suffix = {"ubj": ".ubj", "state_dict": ".pt"}.get(format, ".bin")
    return Serialized(framework, framework_version, format, suffix, lambda w: w.write(payload), cons)


def to_payload(obj: Any, *, init_kwargs: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
    """``obj`` in its native format as bytes, plus what :func:`from_payload` needs to rebuild it."""
    ser = serialize(obj, init_kwargs=init_kwargs)
    return ser.to_bytes(), ser.facts()
