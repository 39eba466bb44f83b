"""Predictions from a loaded model, wherever it is loaded (the server, or a site's workers)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import ConfigError


def as_rows(inputs: Any) -> np.ndarray:
    """``inputs`` as a float32 table of rows; ConfigError unless they are rows of numbers."""
    try:
        import pandas as pd

        if isinstance(inputs, pd.DataFrame):
            return inputs.to_numpy(dtype=np.float32)
    except ImportError:
        pass
    try:
        arr = np.asarray(inputs, dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError("inputs must be a 2-D table of numbers (rows of features)") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim < 2:
        raise ConfigError("inputs must be a 2-D table of numbers (rows of features)")
    return arr


def predict_with(model: Any, inputs: Any, manifest: Any = None) -> dict[str, Any]:
    """Predictions (and class probabilities where the model gives them) for ``inputs``."""
    X = as_rows(inputs)
    schema = manifest.get("input_schema") if isinstance(manifest, dict) else getattr(manifest, "input_schema", None)
    shape = schema.get("shape") if isinstance(schema, dict) else getattr(schema, "shape", None)
    if shape and len(shape) >= 2 and shape[-1] and X.shape[-1] != shape[-1] and X.ndim == 2:
        raise ConfigError(f"inputs have {X.shape[-1]} features; the model takes {shape[-1]}")
    start = time.perf_counter()
    out: dict[str, Any] = {}
    import sys

    xgb = sys.modules.get("xgboost")
    torch = sys.modules.get("torch")
    if xgb is not None and isinstance(model, xgb.Booster):
        if X.shape[1] != model.num_features():
            raise ConfigError(f"inputs have {X.shape[1]} features; the model takes {model.num_features()}")
        # A booster trained on a DataFrame knows its feature names; rows arrive as plain arrays.
        raw = model.predict(xgb.DMatrix(X, feature_names=model.feature_names))
        if raw.ndim == 2:
            out = {"predictions": raw.argmax(1).tolist(), "probabilities": raw.tolist()}
        else:
            objective = ""
            try:
                import json

                objective = json.loads(model.save_config())["learner"]["objective"]["name"]
            except Exception:
                pass
            if objective.startswith("binary"):
                out = {"predictions": (raw > 0.5).astype(int).tolist(), "probabilities": raw.tolist()}
            else:
                out = {"predictions": raw.tolist()}
    elif xgb is not None and isinstance(model, xgb.XGBModel):
        out = {"predictions": model.predict(X).tolist()}
        if hasattr(model, "predict_proba"):
            out["probabilities"] = model.predict_proba(X).tolist()
    elif torch is not None and isinstance(model, torch.nn.Module):
        model.eval()
        with torch.no_grad():
            t = torch.from_numpy(X)
            if shape and len(shape) > 2:  # images: (N, C, H, W)
                t = t.reshape(-1, *[int(d) for d in shape[1:]])
            logits = model(t)
        if logits.ndim == 2 and logits.shape[1] > 1:
            probs = torch.softmax(logits, 1)
            out = {"predictions": probs.argmax(1).tolist(), "probabilities": probs.tolist()}
        else:
            out = {"predictions": logits.reshape(-1).tolist()}
    else:
        raise ConfigError(f"cannot predict with a {type(model).__name__}")
    out["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)
    out["rows"] = int(X.shape[0])
    return out

