"""Holdout metrics shared by every kind of training."""

from __future__ import annotations

import numpy as np


def holdout_metrics(task: str, y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Holdout metrics: AUC + accuracy (binary), accuracy (multiclass), RMSE (regression)."""
    y_true = np.asarray(y_true)
    pred = np.asarray(pred)
    if task == "regression":
        return {"rmse": float(np.sqrt(np.mean((pred.reshape(-1) - y_true) ** 2)))}
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        p = pred[:, 1] if pred.ndim == 2 and pred.shape[1] == 2 else pred.reshape(-1)
        out = {"accuracy": float(np.mean((p >= 0.5) == (y_true >= 0.5)))}
        try:
            out = {"auc": float(roc_auc_score(y_true, p)), **out}
        except ValueError:  # one class in the holdout
            pass
        return out
    labels = pred.argmax(axis=1) if pred.ndim == 2 else pred
    return {"accuracy": float(np.mean(labels == y_true))}
