"""``compress()``: check the arguments, run the framework's steps, measure both models and judge the loss."""

from __future__ import annotations

import sys
import time
from typing import Any

from torch import nn

from lepton_lab.config import COMPRESSION_TOLERANCE
from lepton_lab.errors import ConfigError
from lepton_lab.ml.compress.measure import EvalData, _measure_torch, _measure_xgboost
from lepton_lab.ml.compress.pytorch import _compress_torch
from lepton_lab.ml.compress.report import CompressionRefused, CompressionReport, CompressionResult
from lepton_lab.ml.compress.trees import _booster, _compress_xgboost

METRICS = ("accuracy", "auc", "rmse")


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
