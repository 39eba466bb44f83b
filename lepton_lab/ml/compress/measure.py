"""Measuring a model before and after: evaluation data, size on disk, latency and the metric."""

from __future__ import annotations

import functools
import io
import json
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from lepton_lab.errors import ConfigError
from lepton_lab.ml.compress.report import Measurement
from lepton_lab.registry.modelspec import model_spec

#: The holdout ``compress`` keeps of data it splits itself: ``train``'s default.
TEST_SIZE = 0.2


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
    def of(cls, data: Any, target: Any = None, *, test_size: float | int = TEST_SIZE,
           seed: int = 0) -> EvalData:
        """An ``EvalData`` from an ``EvalData``, a 2- or 4-tuple of arrays, or what ``train`` takes.

        With ``target`` (a column name of a DataFrame, or the labels of ``X``), the rows are
        split into training and holdout rows as ``train`` splits them for the same
        ``test_size`` and ``seed``, so a model's holdout is the one it was measured on.
        """
        if target is not None:
            return cls.split(data, target, test_size=test_size, seed=seed)
        if isinstance(data, EvalData):
            return data
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return cls(X_test=data[0], y_test=data[1])
        if isinstance(data, (tuple, list)) and len(data) == 4:
            return cls(X_train=data[0], y_train=data[1], X_test=data[2], y_test=data[3])
        if hasattr(data, "columns"):
            from lepton_lab.ml.compress.arguments import CompressArgumentError

            raise CompressArgumentError("data is a DataFrame: name its label column with target='column'",
                                        "--data is a DataFrame: name its label column with --target COL")
        raise ConfigError(
            "data must be a DataFrame with target='column', (X_test, y_test), "
            "(X_train, y_train, X_test, y_test) or an EvalData"
        )

    @classmethod
    def split(cls, data: Any, target: Any, *, test_size: float | int = TEST_SIZE,
              seed: int = 0) -> EvalData:
        """Features and labels as ``train`` reads them, split into training and holdout rows."""
        from lepton_lab.ml.train.data import _as_table, _detect_task, _split_indices, _take

        if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not test_size > 0 \
                or (isinstance(test_size, float) and test_size >= 1):
            raise ConfigError(f"test_size must be a fraction in (0, 1) or a row count, not {test_size!r}")
        table = _as_table("xgboost", data, target)
        if table.dask:
            raise ConfigError("compress measures in this process: pass in-memory data "
                              "(a pandas DataFrame or arrays), not a Dask collection")
        task = _detect_task(table, None)
        table.encode(task)  # class labels become 0..K-1, as the trained model predicts them
        y = np.asarray(table.y)
        if task.kind != "regression":
            y = y.astype("int64")
        X = table.X.to_numpy() if hasattr(table.X, "to_numpy") else np.asarray(table.X)
        train_idx, test_idx = _split_indices(table.n_rows, test_size, seed)
        return cls(X_train=_take(X, train_idx), y_train=y[train_idx],
                   X_test=_take(X, test_idx), y_test=y[test_idx])


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


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
