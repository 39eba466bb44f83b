"""``compress()``: check the arguments, run the framework's steps, measure both models and judge the loss."""

from __future__ import annotations

import sys
import time
from typing import Any

from torch import nn

from lepton_lab.config import COMPRESSION_TOLERANCE
from lepton_lab.errors import ConfigError
from lepton_lab.ml.compress.arguments import METRICS as METRICS
from lepton_lab.ml.compress.arguments import check_arguments
from lepton_lab.ml.compress.measure import TEST_SIZE, EvalData, _measure_torch, _measure_xgboost
from lepton_lab.ml.compress.pytorch import _compress_torch
from lepton_lab.ml.compress.report import CompressionRefused, CompressionReport, CompressionResult
from lepton_lab.ml.compress.trees import _booster, _compress_xgboost


def compress(
    model: Any,
    *,
    data: Any = None,
    target: Any = None,
    test_size: float | int = TEST_SIZE,
    seed: int = 0,
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
    best iteration (of a model trained with ``early_stopping=N``); ``prune=gamma``
    runs XGBoost's prune updater (splits gaining less than ``gamma`` become leaves)
    on the training data.

    ``data`` is ``(X_test, y_test)``, ``(X_train, y_train, X_test, y_test)``, an
    :class:`EvalData`, or what ``train`` takes: a DataFrame with ``target`` naming the
    label column (or ``X`` with ``target`` the labels), split into training and
    holdout rows as ``train`` splits them (``test_size``, ``seed``: ``train``'s
    defaults), so a trained model is measured on its own holdout.

    ``metric`` is "accuracy" (default for integer labels), "auc" or "rmse"
    (default for float labels). If it gets worse by more than ``tolerance``
    (points for accuracy/AUC, relative % for RMSE), :class:`CompressionRefused`
    is raised unless ``force=True``.
    """
    started = time.perf_counter()
    framework = _framework(model)
    evald = EvalData.of(data, target, test_size=test_size, seed=seed) if data is not None else None
    check_arguments(framework, evald, quantize, prune, distill, trees, tolerance, metric, epochs)
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
