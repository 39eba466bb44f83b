"""Make a trained model smaller and faster, and say what it cost.

``compress(model, data=..., quantize="int8", prune=0.5)`` returns the compressed
model and a :class:`CompressionReport`: size on disk, latency at batch 1 and 64,
and the accuracy metric, before and after. A compression that loses more than
``tolerance`` points of the metric is refused unless ``force=True``.

PyTorch models get int8 dynamic quantization of Linear layers, structured
pruning (neurons and channels are removed, so the saved file really shrinks)
and knowledge distillation into a smaller student. XGBoost models get fewer
trees (best-iteration slicing) and XGBoost's ``prune`` updater.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lepton_lab.config import COMPRESSION_TOLERANCE
from lepton_lab.errors import ConfigError, LeptonError
from lepton_lab.ml.modelspec import CHANNELWISE as _CHANNELWISE
from lepton_lab.ml.modelspec import SPEC_FORMAT, build_model, model_spec
from lepton_lab.ml.modelspec import quantize_with as _quantize_with
from lepton_lab.ml.modelspec import quantized_engine as _engine
from lepton_lab.ml.modelspec import trace_chain as _trace_chain

__all__ = [
    "CompressionRefused",
    "CompressionReport",
    "CompressionResult",
    "EvalData",
    "Measurement",
    "build_model",
    "compress",
    "interleaved_latency",
    "model_spec",
    "state_dict_bytes",
]

METRICS = ("accuracy", "auc", "rmse")

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


class CompressionRefused(LeptonError):
    """The compressed model loses more than the tolerance; ``err.report`` has the numbers."""

    status = 422

    def __init__(self, message: str, report: CompressionReport | None = None):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------- data


@dataclass(kw_only=True)
class EvalData:
    """Evaluation set, plus an optional training set for fine-tuning and distillation.

    ``compress`` also takes plain tuples: ``(X_test, y_test)`` or
    ``(X_train, y_train, X_test, y_test)``, as numpy arrays or torch tensors.
    """

    X_test: np.ndarray
    y_test: np.ndarray
    X_train: np.ndarray | None = None
    y_train: np.ndarray | None = None

    def __post_init__(self):
        for name in ("X_test", "y_test", "X_train", "y_train"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_numpy(value))
        if len(self.X_test) != len(self.y_test) or len(self.X_test) == 0:
            raise ConfigError(
                f"data: X_test has {len(self.X_test)} rows but y_test has {len(self.y_test)}"
            )
        if (self.X_train is None) != (self.y_train is None):
            raise ConfigError("data: give both X_train and y_train, or neither")
        if self.X_train is not None and len(self.X_train) != len(self.y_train):
            raise ConfigError(
                f"data: X_train has {len(self.X_train)} rows but y_train has {len(self.y_train)}"
            )

    @property
    def has_train(self) -> bool:
        return self.X_train is not None

    @property
    def is_classification(self) -> bool:
        """Integer labels mean classification; float labels mean regression."""
        return self.y_test.dtype.kind in "iub"

    @classmethod
    def of(cls, data: Any) -> EvalData:
        """An ``EvalData`` from an ``EvalData`` or a 2- or 4-tuple of arrays."""
        if isinstance(data, EvalData):
            return data
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return cls(X_test=data[0], y_test=data[1])
        if isinstance(data, (tuple, list)) and len(data) == 4:
            return cls(X_train=data[0], y_train=data[1], X_test=data[2], y_test=data[3])
        raise ConfigError(
            "data must be (X_test, y_test), (X_train, y_train, X_test, y_test) or an EvalData"
        )


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# --------------------------------------------------------------------------- report


@dataclass
class Measurement:
    """One side (before or after) of a compression."""

    size_bytes: int
    latency_ms_batch1: float | None = None
    latency_ms_batch64: float | None = None
    metric: float | None = None


@dataclass
class CompressionReport:
    """What a compression did: sizes, latencies and the metric before and after.

    Accuracy and AUC are in percent and their change in points; RMSE changes are
    relative, in percent of the RMSE before. ``to_dict()`` is JSON-ready,
    ``table()`` a pandas DataFrame, ``figure()`` a plotly figure.
    """

    framework: str
    steps: list[str]
    before: Measurement
    after: Measurement
    metric_name: str | None = None
    tolerance: float = COMPRESSION_TOLERANCE
    backend: str | None = None
    forced: bool = False
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    # ratios and changes -----------------------------------------------------
    @property
    def size_ratio(self) -> float:
        """How many times smaller the saved model is."""
        return self.before.size_bytes / max(self.after.size_bytes, 1)

    @property
    def speedup_batch1(self) -> float | None:
        return _ratio(self.before.latency_ms_batch1, self.after.latency_ms_batch1)

    @property
    def speedup_batch64(self) -> float | None:
        return _ratio(self.before.latency_ms_batch64, self.after.latency_ms_batch64)

    @property
    def metric_unit(self) -> str:
        return "%" if self.metric_name == "rmse" else "points"

    @property
    def metric_change(self) -> float | None:
        """After minus before: points for accuracy/AUC, relative % for RMSE."""
        b, a = self.before.metric, self.after.metric
        if b is None or a is None:
            return None
        if self.metric_name == "rmse":
            return (a - b) / b * 100 if b else 0.0
        return a - b

    @property
    def metric_loss(self) -> float | None:
        """How much worse the metric got, in the tolerance's unit (negative: better)."""
        change = self.metric_change
        if change is None:
            return None
        return change if self.metric_name == "rmse" else -change

    @property
    def within_tolerance(self) -> bool:
        loss = self.metric_loss
        return loss is None or loss <= self.tolerance + 1e-9

    @property
    def label(self) -> str:
        return "+".join(self.steps)

    def refusal(self) -> str:
        """The one-line reason this compression is over the tolerance."""
        name, b, a = self.metric_name, self.before.metric, self.after.metric
        verb = "raises" if name == "rmse" else "drops"
        change = self.metric_change
        assert change is not None, "only a measured change is refused"
        sign = "+" if change >= 0 else "-"
        return (
            f"{self.label} {verb} {name} from {_fmt_metric(name, b)} to {_fmt_metric(name, a)} "
            f"({sign}{abs(change):.1f} {self.metric_unit} > tolerance "
            f"{_num(self.tolerance)}{' %' if name == 'rmse' else ''}); "
            f"pass force=True to keep it"
        )

    # serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields plus the derived ratios."""
        out = asdict(self)
        out.update(
            size_ratio=self.size_ratio,
            speedup_batch1=self.speedup_batch1,
            speedup_batch64=self.speedup_batch64,
            metric_change=self.metric_change,
            metric_unit=self.metric_unit,
        )
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionReport:
        """Inverse of ``to_dict`` (derived ratios are recomputed, not read)."""
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["before"] = Measurement(**data["before"])
        kwargs["after"] = Measurement(**data["after"])
        return cls(**kwargs)

    # views ---------------------------------------------------------------------
    def table(self):
        """A pandas DataFrame: one row per quantity, columns before / after / change."""
        import pandas as pd

        b, a = self.before, self.after
        rows = [
            ("size (bytes)", b.size_bytes, a.size_bytes, _times(self.size_ratio, "smaller", "larger")),
            ("latency batch 1 (ms)", b.latency_ms_batch1, a.latency_ms_batch1,
             _times(self.speedup_batch1, "faster", "slower")),
            ("latency batch 64 (ms)", b.latency_ms_batch64, a.latency_ms_batch64,
             _times(self.speedup_batch64, "faster", "slower")),
        ]
        if self.metric_name:
            change = self.metric_change
            rows.append((
                self.metric_name + (" (%)" if self.metric_name != "rmse" else ""),
                b.metric, a.metric,
                "" if change is None else f"{change:+.2f} {self.metric_unit}",
            ))
        frame = pd.DataFrame(rows, columns=["", "before", "after", "change"]).set_index("")
        frame.index.name = None
        return frame

    def _headline(self) -> str:
        backend = f" [{self.backend}]" if self.backend else ""
        verdict = ("ok" if self.within_tolerance
                   else "over tolerance, kept by force=True" if self.forced else "over tolerance")
        tol = (f"tolerance {_num(self.tolerance)} {self.metric_unit}" if self.metric_name
               else "no metric")
        return f"{self.framework} {self.label}{backend}: {verdict} ({tol}, {self.seconds:.1f} s)"

    def __str__(self) -> str:
        frame = self.table().map(_cell)
        return self._headline() + "\n" + frame.to_string()

    def _repr_html_(self) -> str:
        import html

        table = self.table().map(_cell).to_html()
        return f"<div><b>{html.escape(self._headline())}</b>{table}</div>"

    def figure(self):
        """A plotly figure: grouped before/after bars for size, latency and the metric."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        titles = ["size (MB)", "latency (ms)", self.metric_name or "metric"]
        fig = make_subplots(rows=1, cols=3, subplot_titles=titles)
        for side, color in (("before", "#8c8c8c"), ("after", "#1f77b4")):
            m: Measurement = getattr(self, side)
            common = dict(name=side, legendgroup=side, marker_color=color)
            fig.add_trace(go.Bar(x=["size"], y=[m.size_bytes / 1e6], **common), 1, 1)
            fig.add_trace(go.Bar(x=["batch 1", "batch 64"],
                                 y=[m.latency_ms_batch1, m.latency_ms_batch64],
                                 showlegend=False, **common), 1, 2)
            fig.add_trace(go.Bar(x=[self.metric_name or "-"], y=[m.metric],
                                 showlegend=False, **common), 1, 3)
        fig.update_layout(barmode="group", title=self._headline(), height=360)
        return fig


def _num(value: float) -> str:
    """1.0 stays "1.0", 0.25 stays "0.25"."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"  # byte counts
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ratio(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or after <= 0:
        return None
    return before / after


def _times(ratio: float | None, better: str, worse: str) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def _fmt_metric(name: str | None, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if name == "rmse" else f"{value:.1f}"


class CompressionResult(NamedTuple):
    """The compressed model and its report; unpacks as ``model, report = compress(...)``."""

    model: Any
    report: CompressionReport

    def _repr_html_(self) -> str:
        return self.report._repr_html_()


# --------------------------------------------------------------------------- entry point


def compress(
    model: Any,
    *,
    data: Any = None,
    quantize: str | None = None,
    prune: float | None = None,
    distill: nn.Module | str | None = None,
    trees: int | str | None = None,
    tolerance: float = COMPRESSION_TOLERANCE,
    force: bool = False,
    metric: str | None = None,
    epochs: int | None = None,
    progress: bool = True,
) -> CompressionResult:
    """Compress ``model`` and return ``(compressed_model, report)``; the input is left as it is.

    PyTorch (``nn.Module``): ``distill`` ("auto" or a student module) trains a
    smaller student on ``data``'s training part; ``prune=0.5`` removes half of the
    hidden neurons/channels (lowest L2 norm) and fine-tunes ``epochs`` epochs when
    training data is given; ``quantize="int8"`` quantizes Linear layers. Steps run
    in that order. The result carries ``lepton_spec`` (see :func:`build_model`)
    when the model is a plain chain of standard layers.

    XGBoost (``Booster``, ``XGBClassifier``, ``XGBRegressor``): ``trees=N`` keeps
    the first N boosting rounds, ``trees="best"`` those up to the early-stopping
    best iteration; ``prune=gamma`` runs XGBoost's prune updater (splits gaining
    less than ``gamma`` become leaves) on the training data.

    ``metric`` is "accuracy" (default for integer labels), "auc" or "rmse"
    (default for float labels). If it gets worse by more than ``tolerance``
    (points for accuracy/AUC, relative % for RMSE), :class:`CompressionRefused`
    is raised unless ``force=True``.
    """
    started = time.perf_counter()
    framework = _framework(model)
    evald = EvalData.of(data) if data is not None else None
    _check_arguments(framework, evald, quantize, prune, distill, trees, tolerance, metric, epochs)
    metric = metric or (None if evald is None else
                        ("accuracy" if evald.is_classification else "rmse"))
    if framework == "torch":
        new_model, steps, backend, details = _compress_torch(
            model, evald, quantize, prune, distill, epochs, progress)
        before, after = _measure_torch(model, new_model, evald, metric)
    else:
        new_model, steps, details = _compress_xgboost(model, evald, prune, trees)
        backend = f"xgboost {sys.modules['xgboost'].__version__}"
        before, after = _measure_xgboost(_booster(model), _booster(new_model), evald, metric)
    report = CompressionReport(
        framework=framework, steps=steps, before=before, after=after, metric_name=metric,
        tolerance=float(tolerance), backend=backend, forced=bool(force), details=details,
        seconds=time.perf_counter() - started,
    )
    if not report.within_tolerance and not force:
        raise CompressionRefused(report.refusal(), report)
    return CompressionResult(new_model, report)


def _framework(model: Any) -> str:
    if isinstance(model, nn.Module):
        return "torch"
    xgb = sys.modules.get("xgboost")  # a model of it exists only if it was imported
    if xgb is not None and isinstance(model, (xgb.Booster, xgb.XGBModel)):
        return "xgboost"
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    raise ConfigError(
        f"compress() takes a torch.nn.Module, an xgboost.Booster or an XGBClassifier/"
        f"XGBRegressor, not {kind}"
    )


def _check_arguments(framework, evald, quantize, prune, distill, trees, tolerance, metric, epochs):
    if quantize is None and prune is None and distill is None and trees is None:
        raise ConfigError("nothing to do: pass quantize='int8', prune=, distill= or trees=")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be 'int8' or None, not {quantize!r}")
    if prune is not None and (isinstance(prune, bool) or not isinstance(prune, (int, float))):
        raise ConfigError(f"prune must be a number, not {prune!r}")
    if metric not in (None, *METRICS):
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ConfigError(f"tolerance must be a number >= 0, not {tolerance!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 0):
        raise ConfigError(f"epochs must be an integer >= 0, not {epochs!r}")
    if framework == "torch":
        if trees is not None:
            raise ConfigError("trees= is for XGBoost models; use prune= or distill= for PyTorch")
        if prune is not None and not 0 < prune < 1:
            raise ConfigError(f"prune is the fraction of hidden units to remove, in (0, 1), "
                              f"not {prune}")
        if distill is not None and distill != "auto" and not isinstance(distill, nn.Module):
            raise ConfigError(f"distill must be 'auto' or a student nn.Module, not {distill!r}")
        if distill is not None and (evald is None or not evald.has_train):
            raise ConfigError("distillation trains a student: pass "
                              "data=(X_train, y_train, X_test, y_test)")
    else:
        if quantize is not None or distill is not None:
            raise ConfigError("XGBoost models take trees= and prune=, not quantize= or distill=")
        if trees is not None and trees != "best" and (
                isinstance(trees, bool) or not isinstance(trees, int) or trees < 1):
            raise ConfigError(f"trees must be 'best' or a number of rounds >= 1, not {trees!r}")
        if prune is not None and prune < 0:
            raise ConfigError(f"prune is XGBoost's gamma for the prune updater, >= 0, not {prune}")
        if prune is not None and (evald is None or not evald.has_train):
            raise ConfigError("XGBoost's prune updater needs training data: pass "
                              "data=(X_train, y_train, X_test, y_test)")
    if metric in ("accuracy", "auc") and evald is not None and not evald.is_classification:
        raise ConfigError(f"metric {metric!r} needs integer class labels; y_test is "
                          f"{evald.y_test.dtype}")


# --------------------------------------------------------------------------- torch: steps


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


def _forward_all(model: nn.Module, X: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    return torch.cat([model(X[i:i + batch]) for i in range(0, len(X), batch)])


def _sample_input(evald: EvalData | None, spec: dict | None, batch: int) -> torch.Tensor | None:
    """``batch`` rows of test data, or random rows when the first layer tells the input size."""
    if evald is not None:
        X = evald.X_test
        rows = np.resize(np.arange(len(X)), batch)  # repeats rows if there are fewer
        return torch.as_tensor(X[rows], dtype=torch.float32)
    first = None if spec is None else spec["layers"][0]
    if first is not None and first["type"] == "Linear":
        return torch.randn(batch, first["in_features"], generator=torch.Generator().manual_seed(0))
    return None


# --------------------------------------------------------------------------- measuring


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the model's size on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def interleaved_latency(fns: Sequence[Callable[[], Any]], *, rounds: int = 15,
                        sample_seconds: float = 0.002) -> list[float]:
    """Median seconds per call of each function, measured in alternating rounds.

    Latency on a shared CPU drifts between runs, so the candidates take turns
    (the order flips every round) and each sample repeats a call enough times to
    last about ``sample_seconds``.
    """
    inner = []
    for fn in fns:
        fn(), fn()  # warm-up: allocator, packed-weight caches
        fastest = math.inf
        for _ in range(3):  # the fastest of a few, so one stalled call does not set the count
            start = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - start)
        inner.append(max(1, int(sample_seconds / max(fastest, 1e-7))))
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(inner[i]):
                fns[i]()
            samples[i].append((time.perf_counter() - start) / inner[i])
    return [statistics.median(s) for s in samples]


def _torch_latencies(models, evald, spec) -> list[tuple[float | None, float | None]]:
    per_batch: list[list[float | None]] = []
    for batch in (1, 64):
        x = _sample_input(evald, spec, batch)
        if x is None:
            per_batch.append([None] * len(models))
            continue
        with torch.inference_mode():
            seconds = interleaved_latency([functools.partial(m, x) for m in models])
        per_batch.append([s * 1e3 for s in seconds])
    return list(zip(*per_batch))


def _measure_torch(model, new_model, evald, metric) -> tuple[Measurement, Measurement]:
    model_was_training = model.training
    model.eval()
    try:
        spec = getattr(new_model, "lepton_spec", None) or model_spec(model)
        latencies = _torch_latencies([model, new_model], evald, spec)
        sides = []
        for m, (b1, b64) in zip((model, new_model), latencies):
            score = None
            if evald is not None:
                with torch.inference_mode():
                    out = _forward_all(m, torch.as_tensor(evald.X_test, dtype=torch.float32))
                score = _score(metric, _torch_outputs(out, evald), evald.y_test)
            sides.append(Measurement(state_dict_bytes(m), b1, b64, score))
    finally:
        model.train(model_was_training)
    return sides[0], sides[1]


def _torch_outputs(out: torch.Tensor, evald: EvalData) -> np.ndarray:
    """Class probabilities (N, K), positive-class probability (N,) or values (N,)."""
    if not evald.is_classification:
        return out.reshape(len(out), -1)[:, 0].numpy()
    if out.ndim == 2 and out.shape[1] > 1:
        return torch.softmax(out, dim=1).numpy()
    return torch.sigmoid(out.reshape(-1)).numpy()


def _score(metric: str | None, outputs: np.ndarray, y: np.ndarray) -> float | None:
    """Accuracy and AUC in percent, RMSE in the label's unit."""
    if metric == "rmse":
        return float(np.sqrt(np.mean((outputs.reshape(len(y)) - y) ** 2)))
    labels = outputs.argmax(axis=1) if outputs.ndim == 2 else (outputs > 0.5).astype(int)
    if metric == "accuracy":
        return float(np.mean(labels == y) * 100)
    from sklearn.metrics import roc_auc_score

    if outputs.ndim == 2 and outputs.shape[1] == 2:
        outputs = outputs[:, 1]
    if outputs.ndim == 2:
        return float(roc_auc_score(y, outputs, multi_class="ovr") * 100)
    return float(roc_auc_score(y, outputs) * 100)


# --------------------------------------------------------------------------- xgboost


def _booster(model):
    return model.get_booster() if isinstance(model, sys.modules["xgboost"].XGBModel) else model


def _compress_xgboost(model, evald, gamma, trees):
    import xgboost as xgb

    booster = _booster(model)
    rounds = booster.num_boosted_rounds()
    details: dict[str, Any] = {"rounds_before": rounds, "nodes_before": _n_nodes(booster)}
    steps: list[str] = []
    new = booster
    if trees is not None:
        if trees == "best":
            best = booster.attr("best_iteration")
            if best is None:
                raise ConfigError("trees='best' needs a model trained with early stopping; "
                                  "pass trees=N instead")
            keep = int(best) + 1
        elif trees >= rounds:
            raise ConfigError(f"trees={trees} does not cut anything: the model has {rounds} "
                              f"rounds")
        else:
            keep = trees
        # Slicing drops best_iteration, which described the uncut model.
        new = booster[:keep]
        steps.append(f"trees {keep}")
    if gamma is not None:
        dtrain = xgb.DMatrix(evald.X_train, label=evald.y_train)
        with warnings.catch_warnings():
            # Asking for an updater by name makes xgboost warn that tree_method is ignored.
            warnings.filterwarnings("ignore", message=".*updater.*", category=UserWarning)
            new = xgb.train({"process_type": "update", "updater": "prune", "gamma": gamma},
                            dtrain, num_boost_round=new.num_boosted_rounds(), xgb_model=new)
        new = _compact_trees(new)
        steps.append(f"prune gamma {gamma:g}")
    details.update(rounds_after=new.num_boosted_rounds(), nodes_after=_n_nodes(new))
    if isinstance(model, xgb.XGBModel):
        wrapped = type(model)(**model.get_params())
        wrapped.load_model(bytearray(new.save_raw("ubj")))
        return wrapped, steps, details
    return new, steps, details


def _trees_json(model: dict) -> list[dict] | None:
    booster = model["learner"]["gradient_booster"]
    booster = booster.get("gbtree", booster)  # dart nests its trees one level deeper
    return booster.get("model", {}).get("trees")


def _n_nodes(booster) -> int:
    trees = _trees_json(json.loads(booster.save_raw("json"))) or []
    return sum(int(t["tree_param"]["num_nodes"]) - int(t["tree_param"]["num_deleted"])
               for t in trees)


def _compact_trees(booster):
    """Drop the nodes the prune updater marked deleted; XGBoost keeps them in its files."""
    import xgboost as xgb

    model = json.loads(booster.save_raw("json"))
    trees = _trees_json(model)
    if not trees:
        return booster
    for tree in trees:
        param = tree["tree_param"]
        if int(param["num_deleted"]) == 0:
            continue
        if tree.get("categories_nodes") or int(param.get("size_leaf_vector", "1")) > 1:
            return booster  # categorical or vector leaves: leave the layout to XGBoost
        n = int(param["num_nodes"])
        order, i = [0], 0
        while i < len(order):
            node = order[i]
            order += [c for c in (tree["left_children"][node], tree["right_children"][node])
                      if c != -1]
            i += 1
        new_id = {old: new for new, old in enumerate(order)}
        for key, values in list(tree.items()):
            if isinstance(values, list) and len(values) == n:
                tree[key] = [values[o] for o in order]
        for key in ("left_children", "right_children"):
            tree[key] = [new_id.get(c, -1) for c in tree[key]]
        tree["parents"] = [new_id.get(p, p) for p in tree["parents"]]
        param["num_nodes"], param["num_deleted"] = str(len(order)), "0"
    compact = xgb.Booster()
    compact.load_model(bytearray(json.dumps(model).encode()))
    return compact


def _xgb_outputs(booster, X: np.ndarray) -> np.ndarray:
    """Probabilities as for torch: (N, K), positive class (N,), or regression values."""
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    out = booster.inplace_predict(X)
    if objective == "binary:logitraw":
        return 1 / (1 + np.exp(-out))
    if objective == "multi:softmax":
        return np.eye(int(out.max()) + 1)[out.astype(int)]  # labels only: one-hot "probabilities"
    return out


def _measure_xgboost(booster, new_booster, evald, metric) -> tuple[Measurement, Measurement]:
    latencies: list[list[float | None]] = [[None, None], [None, None]]
    if evald is not None:
        for j, batch in enumerate((1, 64)):
            X = evald.X_test[np.resize(np.arange(len(evald.X_test)), batch)]
            seconds = interleaved_latency([functools.partial(b.inplace_predict, X)
                                           for b in (booster, new_booster)])
            latencies[0][j], latencies[1][j] = seconds[0] * 1e3, seconds[1] * 1e3
    sides = []
    for b, (b1, b64) in zip((booster, new_booster), latencies):
        score = None if evald is None else _score(
            metric, _xgb_outputs(b, evald.X_test), evald.y_test)
        sides.append(Measurement(len(b.save_raw("ubj")), b1, b64, score))
    return sides[0], sides[1]
