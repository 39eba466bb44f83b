"""XGBoost's parameters for a task, and its early-stopping rule."""

from __future__ import annotations

from typing import Any

from .data import _Task


def _xgb_params(task: _Task, params: dict[str, Any], gpu: bool) -> dict[str, Any]:
    p: dict[str, Any] = {"tree_method": "hist"}
    if task.kind == "binary":
        p.update(objective="binary:logistic", eval_metric=["auc", "error"])
    elif task.kind == "multiclass":
        p.update(objective="multi:softprob", num_class=task.n_classes, eval_metric=["merror", "mlogloss"])
    else:
        p.update(objective="reg:squarederror", eval_metric=["rmse"])
    if "objective" in params and "eval_metric" not in params:
        p.pop("eval_metric", None)
    p.update(params)
    if gpu:
        p["device"] = "cuda"
    return p


def _early_stopping(rounds: int, params: dict[str, Any]) -> Any:
    """XGBoost's rule: stop when the validation set's first metric has not improved for ``rounds`` rounds."""
    import xgboost as xgb

    metric = params.get("eval_metric")
    if isinstance(metric, (list, tuple)):
        metric = metric[0] if metric else None
    return xgb.callback.EarlyStopping(rounds=rounds, metric_name=metric, data_name="validation", save_best=False)
