"""PyTorch compression steps: distillation into a smaller student, structured pruning, int8 quantization.

Pruning removes whole neurons and channels, so the saved file really shrinks; a plain
chain of standard layers comes out as the ``nn.Sequential`` of its model spec.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lepton_lab.errors import ConfigError
from lepton_lab.ml.compress.measure import EvalData, _forward_all, _sample_input, interleaved_latency
from lepton_lab.registry.modelspec import CHANNELWISE as _CHANNELWISE
from lepton_lab.registry.modelspec import SPEC_FORMAT, build_model
from lepton_lab.registry.modelspec import quantize_with as _quantize_with
from lepton_lab.registry.modelspec import quantized_engine as _engine
from lepton_lab.registry.modelspec import trace_chain as _trace_chain

#: Knowledge-distillation defaults: softening temperature and weight of the teacher term.
DISTILL_TEMPERATURE = 4.0
DISTILL_ALPHA = 0.7
#: Epochs when ``epochs`` is not given: fine-tuning after pruning, and distillation.
FINETUNE_EPOCHS = 5
DISTILL_EPOCHS = 30
#: Width factor of the ``distill="auto"`` student's hidden layers.
AUTO_STUDENT_SCALE = 0.25
#: Adam learning rates: gentle for fine-tuning trained weights, brisker for a fresh student.
FINETUNE_LR = 1e-3
DISTILL_LR = 5e-3


def _compress_torch(model, evald, quantize, prune, distill, epochs, progress):
    steps: list[str] = []
    details: dict[str, Any] = {"params_before": _n_params(model)}
    current, spec = _canonical(model)
    if spec is not None:
        details["widths_before"] = _widths(spec)
    current.eval()
    backend = None

    if distill is not None:
        current, spec, info = _distill(current, distill, evald, spec, epochs, progress)
        steps.append("distill" if distill != "auto" else "distill auto")
        details["distill"] = info
    if prune is not None:
        current, spec = _prune(current, prune)
        steps.append(f"prune {prune:g}")
        n_epochs = FINETUNE_EPOCHS if epochs is None else epochs
        if evald is not None and evald.has_train and n_epochs:
            _fit(current, evald, n_epochs, progress, desc="fine-tune")
            steps.append(f"fine-tune {n_epochs} epochs")
    details["params_after"] = _n_params(current)
    if spec is not None:
        details["widths_after"] = _widths(spec)
    if quantize == "int8":
        current, backend = _quantize_int8(current, _sample_input(evald, spec, 1))
        steps.append("int8")
        if spec is not None:
            spec = {**spec, "quantize": "int8", "backend": backend.split()[0]}
    current.eval()
    if spec is not None:
        current.lepton_spec = spec
    return current, steps, backend, details


def _canonical(model: nn.Module) -> tuple[nn.Module, dict | None]:
    """A copy of the model and its spec; a plain chain becomes the spec's ``nn.Sequential``.

    Same maths, but layers named 0, 1, 2... as in the spec, so the spec loads its state_dict.
    """
    chain = _trace_chain(model)
    if chain is None:
        return copy.deepcopy(model), None
    return _sequential(*chain)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _widths(spec: dict) -> list[int]:
    """Output width of each Linear/Conv2d layer, e.g. [128, 128, 10]."""
    return [e.get("out_features", e.get("out_channels")) for e in spec["layers"]
            if e["type"] in ("Linear", "Conv2d")]


def _quantize_int8(model: nn.Module, sample: torch.Tensor | None) -> tuple[nn.Module, str]:
    """int8 dynamic quantization of Linear layers: torchao where it runs and is not slower
    here than torch.ao, else torch.ao. The backend string says which, and why."""
    plain = f"torch.ao quantize_dynamic ({_engine()})"
    try:
        import torchao

        quantized = _quantize_with("torchao", copy.deepcopy(model))
        if sample is not None:
            with torch.inference_mode():
                quantized(sample)  # some torchao kernels are missing on some CPUs
    except Exception:  # not installed, or no kernels for this CPU
        return _quantize_with("torch.ao", model), plain
    if sample is None:
        return quantized, f"torchao {torchao.__version__}"
    # On CPUs without torchao's fast kernels its int8 can be many times slower than
    # torch.ao's: time both on the sample (batch 1) and keep the faster.
    fallback = _quantize_with("torch.ao", model)
    with torch.inference_mode():
        t_ao, t_plain = interleaved_latency([lambda: quantized(sample), lambda: fallback(sample)],
                                            rounds=7)
    if t_ao <= t_plain:
        return quantized, f"torchao {torchao.__version__}"
    return fallback, f"{plain}; torchao {torchao.__version__} ran {t_ao / t_plain:.1f}x slower here"


def _prune(model: nn.Module, amount: float) -> tuple[nn.Sequential, dict]:
    """Remove the lowest-L2-norm neurons/channels of every hidden Linear/Conv2d layer."""
    chain = _trace_chain(model)
    if chain is None:
        raise ConfigError("prune= needs a plain chain of standard layers (like nn.Sequential); "
                          "this model has branches or custom operations")
    layers, modules = chain
    weighted = [i for i, e in enumerate(layers) if e["type"] in ("Linear", "Conv2d")]
    keep: dict[int, torch.Tensor] = {}
    for a, b in zip(weighted, weighted[1:]):
        if _prunable(layers, a, b):
            norms = cast("nn.Linear | nn.Conv2d", modules[a]).weight.detach().flatten(1).norm(dim=1)
            n_keep = max(1, round(len(norms) * (1 - amount)))
            keep[a] = torch.topk(norms, n_keep).indices.sort().values
    if not keep:
        raise ConfigError("nothing to prune: structured pruning needs at least two "
                          "Linear/Conv2d layers in a chain")
    return _sequential(layers, modules, keep)


def _sequential(layers: list[dict], modules: list[nn.Module | None],
                keep: dict[int, torch.Tensor] | None = None) -> tuple[nn.Sequential, dict]:
    """The chain as an ``nn.Sequential`` and its spec, keeping only ``keep[i]`` outputs of layer i.

    The next weighted layer loses the matching inputs, and BatchNorm between them
    the matching features.
    """
    keep = keep or {}
    layers = copy.deepcopy(layers)
    tensors: dict[str, torch.Tensor] = {}
    kept = None  # indices of the channels that flow out of the last weighted layer
    channels = 0  # that layer's channel count before pruning
    for i, (entry, module) in enumerate(zip(layers, modules)):
        if entry["type"] in ("Linear", "Conv2d"):
            module = cast("nn.Linear | nn.Conv2d", module)
            weight = module.weight.detach()
            bias = None if module.bias is None else module.bias.detach()
            if kept is not None:
                # A flattened conv output holds each channel's positions side by side.
                per_channel = weight.shape[1] // channels
                cols = (kept[:, None] * per_channel + torch.arange(per_channel)).flatten()
                weight = weight[:, cols]
            if i in keep:
                weight = weight[keep[i]]
                bias = None if bias is None else bias[keep[i]]
            in_key, out_key = (("in_features", "out_features") if entry["type"] == "Linear"
                               else ("in_channels", "out_channels"))
            entry[in_key], entry[out_key] = weight.shape[1], weight.shape[0]
            tensors[f"{i}.weight"] = weight
            if bias is not None:
                tensors[f"{i}.bias"] = bias
            kept, channels = keep.get(i), module.weight.shape[0]
        elif module is not None:
            state = module.state_dict()
            if kept is not None and entry["type"].startswith("BatchNorm"):
                entry["num_features"] = len(kept)
                state = {k: v if v.ndim == 0 else v[kept] for k, v in state.items()}
            tensors.update({f"{i}.{k}": v for k, v in state.items()})
    spec = {"format": SPEC_FORMAT, "layers": layers}
    model = build_model(spec)
    model.load_state_dict({k: v.clone() for k, v in tensors.items()})
    return model, spec


def _prunable(layers: list[dict], a: int, b: int) -> bool:
    """Can layer ``a``'s outputs be removed along with layer ``b``'s matching inputs?"""
    first, second = layers[a], layers[b]
    if first.get("groups", 1) != 1 or second.get("groups", 1) != 1:
        return False
    between = [e["type"] for e in layers[a + 1:b]]
    flattens = between.count("Flatten")
    ok = all(t in _CHANNELWISE or t.startswith("BatchNorm") or t == "Flatten" for t in between)
    if first["type"] == "Linear":
        return ok and second["type"] == "Linear"
    if second["type"] == "Conv2d":
        return ok and flattens == 0
    flat = [e for e in layers[a + 1:b] if e["type"] == "Flatten"]
    return (ok and flattens == 1 and flat[0]["start_dim"] == 1
            and second["in_features"] % first["out_channels"] == 0)


def _distill(teacher, distill, evald, teacher_spec, epochs, progress):
    """Train a smaller student on the teacher's softened outputs and the labels."""
    X = torch.as_tensor(evald.X_train, dtype=torch.float32)
    with torch.inference_mode():
        teacher_out = _forward_all(teacher, X)
    if distill == "auto":
        spec = _auto_student_spec(teacher_spec, _n_params(teacher), X.shape[1:],
                                  teacher_out.shape[1:])
        student = build_model(spec).train()
    else:
        student, spec = _canonical(distill)
        student.train()
        with torch.inference_mode():
            shape = tuple(student(X[:2]).shape[1:])
        if shape != tuple(teacher_out.shape[1:]):
            raise ConfigError(f"the student's outputs have shape {shape} but the teacher's "
                              f"{tuple(teacher_out.shape[1:])}")
    n_epochs = DISTILL_EPOCHS if epochs is None else epochs
    _fit(student, evald, n_epochs, progress, desc="distill", teacher_out=teacher_out,
         lr=DISTILL_LR)
    info = {"epochs": n_epochs, "temperature": DISTILL_TEMPERATURE, "alpha": DISTILL_ALPHA,
            "teacher_params": _n_params(teacher), "student_params": _n_params(student)}
    return student.eval(), spec, info


def _auto_student_spec(teacher_spec, teacher_params, in_shape, out_shape) -> dict:
    """The teacher's MLP with hidden widths scaled down, or a one-hidden-layer MLP."""
    layers = None if teacher_spec is None else copy.deepcopy(teacher_spec["layers"])
    if layers and all(e["type"] not in ("Conv2d", "BatchNorm2d") for e in layers):
        linear = [e for e in layers if e["type"] == "Linear"]
        for prev, nxt in zip(linear, linear[1:]):
            prev["out_features"] = max(4, round(prev["out_features"] * AUTO_STUDENT_SCALE))
            nxt["in_features"] = prev["out_features"]
        for i, e in enumerate(layers):
            if e["type"] == "BatchNorm1d":
                e["num_features"] = next(x["out_features"] for x in reversed(layers[:i])
                                         if x["type"] == "Linear")
        return {"format": SPEC_FORMAT, "layers": layers}
    n_in, n_out = math.prod(in_shape), math.prod(out_shape) or 1
    # One hidden layer with about AUTO_STUDENT_SCALE of the teacher's parameters.
    hidden = max(16, min(512, round(AUTO_STUDENT_SCALE * teacher_params / (n_in + n_out + 1))))
    return {"format": SPEC_FORMAT, "layers": [
        {"type": "Flatten", "start_dim": 1, "end_dim": -1},
        {"type": "Linear", "in_features": n_in, "out_features": hidden, "bias": True},
        {"type": "ReLU"},
        {"type": "Linear", "in_features": hidden, "out_features": n_out, "bias": True},
    ]}


def _fit(model: nn.Module, evald: EvalData, epochs: int, progress: bool, *, desc: str,
         teacher_out: torch.Tensor | None = None, batch_size: int = 64,
         lr: float = FINETUNE_LR):
    """A few epochs of Adam on the training part; with ``teacher_out``, distillation loss."""
    from tqdm.auto import tqdm

    X = torch.as_tensor(evald.X_train, dtype=torch.float32)
    y = torch.as_tensor(evald.y_train)
    classification = evald.is_classification
    y = y.long() if classification else y.float()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        total = 0.0
        for idx in torch.randperm(len(X), generator=generator).split(batch_size):
            out = model(X[idx])
            if teacher_out is None:
                loss = _task_loss(out, y[idx], classification)
            else:
                loss = _distill_loss(out, teacher_out[idx], y[idx], classification)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(X):.4f}")
    model.eval()


def _task_loss(out, y, classification):
    if not classification:
        return F.mse_loss(out.reshape(y.shape), y)
    if out.ndim == 1 or out.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(out.reshape(y.shape), y.float())
    return F.cross_entropy(out, y)


def _distill_loss(out, teacher, y, classification):
    if not classification or out.ndim == 1 or out.shape[1] == 1:
        soft = F.mse_loss(out, teacher)  # no class distribution to soften
    else:
        t = DISTILL_TEMPERATURE
        # KL on softened distributions; t² keeps its gradient scale comparable to CE.
        soft = F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
    return DISTILL_ALPHA * soft + (1 - DISTILL_ALPHA) * _task_loss(out, y, classification)
