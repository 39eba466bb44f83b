"""Model specs: a plain chain of standard PyTorch layers as JSON, and back.

``model_spec(model)`` reads the chain (``None`` when the model is not one);
``build_model(spec)`` builds the equivalent ``nn.Sequential``, pruned widths and
int8 quantization included, so a saved ``state_dict`` loads into it. The registry
rebuilds compressed models with :func:`build_model`; the compressor writes specs.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lepton_lab.errors import ConfigError

__all__ = ["CHANNELWISE", "SPEC_FORMAT", "build_model", "model_spec", "quantize_with", "quantized_engine",
           "trace_chain"]

SPEC_FORMAT = "lepton.sequential/1"

_ACTIVATIONS = {"ReLU": (), "LeakyReLU": ("negative_slope",), "GELU": ("approximate",),
                "Tanh": (), "Sigmoid": (), "SiLU": (), "ELU": ("alpha",), "Identity": ()}
_POOLS = {
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "AvgPool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "AdaptiveAvgPool2d": ("output_size",),
}
_NORM = ("num_features", "eps", "momentum", "affine", "track_running_stats")
#: Constructor arguments recorded for each supported layer type.
_SPEC_ARGS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
               "groups", "padding_mode"),
    "BatchNorm1d": _NORM,
    "BatchNorm2d": _NORM,
    "Dropout": ("p",),
    "Flatten": ("start_dim", "end_dim"),
    **_ACTIVATIONS,
    **_POOLS,
}
#: Layers between two weighted layers that keep the channel (feature) index.
CHANNELWISE = {"Dropout", *_ACTIVATIONS, *_POOLS}
_FUNCTIONS = {F.relu: "ReLU", torch.relu: "ReLU", torch.tanh: "Tanh", torch.sigmoid: "Sigmoid",
              F.gelu: "GELU", F.silu: "SiLU"}
_METHODS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """JSON-ready construction spec of a model that is a plain chain of standard layers.

    ``None`` when the model has branches, custom operations or layers outside
    Linear, Conv2d, BatchNorm, activations, pooling, Dropout and Flatten.
    ``build_model(spec)`` builds the equivalent ``nn.Sequential``.
    """
    chain = trace_chain(model)
    return None if chain is None else {"format": SPEC_FORMAT, "layers": chain[0]}


def build_model(spec: dict[str, Any]) -> nn.Sequential:
    """An untrained ``nn.Sequential`` from a spec, ready for ``load_state_dict``.

    With ``spec["quantize"] == "int8"`` it is quantized the same way, so the
    compressed model's saved state_dict loads into it.
    """
    if spec.get("format") != SPEC_FORMAT:
        raise ConfigError(f"unknown model spec format {spec.get('format')!r}; "
                          f"expected {SPEC_FORMAT!r}")
    model = nn.Sequential(*(_build_layer(entry) for entry in spec["layers"]))
    if spec.get("quantize") == "int8":
        # Either backend swaps layers inside the chain: the result is still a Sequential.
        model = cast(nn.Sequential, quantize_with(spec.get("backend", "torch.ao"), model))
    return model.eval()


#: The registry calls only functions so marked to rebuild a published model.
build_model.lepton_model_builder = True  # type: ignore[attr-defined]


def _build_layer(entry: dict[str, Any]) -> nn.Module:
    kind = entry["type"]
    if kind not in _SPEC_ARGS:
        raise ConfigError(f"model spec: unsupported layer type {kind!r}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "type"}
    return getattr(nn, kind)(**kwargs)


def _layer_spec(module: nn.Module) -> dict[str, Any] | None:
    kind = type(module).__name__
    # Subclasses may override forward(); only the stock classes are rebuilt faithfully.
    if kind not in _SPEC_ARGS or type(module) is not getattr(nn, kind):
        return None
    entry: dict[str, Any] = {"type": kind}
    for name in _SPEC_ARGS[kind]:
        value = getattr(module, name)
        entry[name] = list(value) if isinstance(value, tuple) else value
    if kind in ("Linear", "Conv2d"):
        entry["bias"] = module.bias is not None
    return entry


def trace_chain(model: nn.Module) -> tuple[list[dict], list[nn.Module | None]] | None:
    """The model's layers in forward order, if its graph is a single chain."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # dynamic control flow and the like: not a plain chain
        return None
    layers: list[dict] = []
    modules: list[nn.Module | None] = []
    current = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                return None
            current = node
            continue
        if node.op == "output":
            return (layers, modules) if node.args[0] is current and layers else None
        if not node.args or node.args[0] is not current:
            return None
        if node.op == "call_method" and node.target == "size" and node.args[1:] == (0,):
            continue  # only feeds the x.view(x.size(0), -1) flatten below
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        entry = _layer_spec(module) if module is not None else _function_spec(node)
        if entry is None:
            return None
        layers.append(entry)
        modules.append(module)
        current = node
    return None


def _function_spec(node) -> dict[str, Any] | None:
    args = node.args
    if node.op == "call_function" and node.target in _FUNCTIONS:
        kind = _FUNCTIONS[node.target]
        return {"type": kind, **({"approximate": node.kwargs.get("approximate", "none")}
                                 if kind == "GELU" else {})}
    if node.op == "call_method" and node.target in _METHODS and len(args) == 1:
        return {"type": _METHODS[node.target]}
    flatten = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten")
    if flatten:
        start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
        return {"type": "Flatten", "start_dim": start, "end_dim": end}
    if node.op == "call_method" and node.target in ("view", "reshape") and len(args) == 3:
        batch, rest = args[1], args[2]
        by_size = getattr(batch, "target", None) == "size" and rest == -1
        if by_size or (batch == -1 and isinstance(rest, int)):
            return {"type": "Flatten", "start_dim": 1, "end_dim": -1}
    if node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d):
        kind = "MaxPool2d" if node.target is F.max_pool2d else "AvgPool2d"
        names = ("kernel_size", "stride", "padding") + (
            ("dilation", "ceil_mode", "return_indices") if kind == "MaxPool2d"
            else ("ceil_mode", "count_include_pad", "divisor_override"))
        params = {**dict(zip(names, args[1:])), **node.kwargs}
        if params.get("return_indices") or params.get("divisor_override") is not None:
            return None  # not a plain tensor-to-tensor layer of the spec
        params.pop("return_indices", None), params.pop("divisor_override", None)
        return {"type": kind, **{k: list(v) if isinstance(v, tuple) else v
                                 for k, v in params.items()}}
    return None


def quantized_engine() -> str:
    """torch's quantized engine, switched to x86 where that is supported."""
    engines = torch.backends.quantized.supported_engines
    if "x86" in engines and torch.backends.quantized.engine != "x86":
        torch.backends.quantized.engine = "x86"
    return torch.backends.quantized.engine


def quantize_with(backend: str, model: nn.Module) -> nn.Module:
    """int8 dynamic quantization of the Linear layers with ``"torchao"`` or ``"torch.ao"``."""
    if backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
        return model
    quantized_engine()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not always usable.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
