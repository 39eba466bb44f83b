"""One tuning trial, as a Dask task on a worker: train, report each round or epoch, stop when pruned.

A trial posts its intermediate holdout metric on the study's event topic
(:func:`lepton_lab.ml.progress.post`, over the worker's scheduler connection);
the kernel reports it to Optuna and, when the pruner says so, calls
:func:`stop` on the trial's worker (``client.run``), which marks the trial in
this process: the training loop sees the mark at its next round or epoch and
ends there, returning ``pruned``. No round trip per round: the mark is a set
in worker memory.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Any

import numpy as np

from . import progress as _progress

#: Trials of this worker process the kernel asked to stop (pruned, or the study was stopped).
_STOP: set[str] = set()
_lock = threading.Lock()

#: The intermediate metric: (holdout metric) -> (XGBoost eval metric per task, turn it into the metric)
XGB_EVAL = {
    ("auc", "binary"): ("auc", False),
    ("accuracy", "binary"): ("error", True),
    ("accuracy", "multiclass"): ("merror", True),
    ("rmse", "regression"): ("rmse", False),
}


class _Pruned(Exception):
    """Raised inside a training loop to leave it: the kernel pruned this trial."""


async def stop(key: str) -> bool:
    """Mark trial ``key`` to stop at its next round or epoch (runs on the worker via ``client.run``).

    A coroutine, so that ``client.run(..., wait=False)`` may fire it without waiting.
    """
    with _lock:
        _STOP.add(key)
    return True


def _stopped(key: str) -> bool:
    return key in _STOP


def _forget(key: str) -> None:
    with _lock:
        _STOP.discard(key)


class _Poster:
    """Sends ``(step, value)`` rows to the kernel: at most every MIN_INTERVAL s, the rows between riding along."""

    def __init__(self, spec: dict[str, Any]):
        self.topic, self.run, self.number = spec["topic"], spec["run"], spec["number"]
        self.rows: list[list[float]] = []
        self.sent_at = 0.0
        self.every = float(spec.get("post_interval", _progress.MIN_INTERVAL))
        self.stride = int(spec.get("stride", 1))
        self.last = int(spec.get("rounds") or spec.get("epochs") or 0)

    def add(self, step: int, value: float, force: bool = False) -> None:
        if step % self.stride and step != self.last:
            return
        self.rows.append([int(step), float(value)])
        now = time.monotonic()
        if force or now - self.sent_at >= self.every:
            self.flush()
            self.sent_at = now

    def flush(self) -> None:
        if self.rows:
            _progress.post(self.topic, {"run": self.run, "trial": self.number, "rows": self.rows,
                                        "worker_name": _progress.worker_name()})
            self.rows = []


def _callback_class() -> Any:
    import xgboost

    class TrialCallback(xgboost.callback.TrainingCallback):
        def __init__(self, spec: dict[str, Any], eval_name: str, flip: bool):
            self.key = spec["key"]
            self.poster = _Poster(spec)
            self.eval_name = eval_name
            self.flip = flip
            self.pruned = False

        def after_iteration(self, model, epoch, evals_log) -> bool:
            values = evals_log.get("holdout", {}).get(self.eval_name) or [float("nan")]
            value = float(values[-1])
            self.poster.add(epoch + 1, 1.0 - value if self.flip else value)
            if _stopped(self.key):
                self.pruned = True
                return True
            return False

    return TrialCallback


def xgb_trial(X: Any, y: Any, X_test: Any, y_test: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Train one XGBoost trial in this worker with ``spec["nthread"]`` threads; its outcome."""
    import xgboost as xgb

    from .metrics import holdout_metrics
    from .train import _openmp_threads
    from .train.xgb_progress import _xgb_history

    started = time.perf_counter()
    key = spec["key"]
    nthread = int(spec["nthread"])
    eval_name, flip = XGB_EVAL[(spec["metric"], spec["task"])]
    params = dict(spec["params"])
    params["nthread"] = nthread
    metrics = params.get("eval_metric")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    params["eval_metric"] = [m for m in metrics if m != eval_name] + [eval_name]
    callback = _callback_class()(spec, eval_name, flip)
    try:
        # One thread needs no lifted OpenMP limit (and threadpoolctl's look at the loaded
        # libraries costs more than a small trial).
        with _openmp_threads(nthread) if nthread > 1 else contextlib.nullcontext():
            dtrain = xgb.QuantileDMatrix(X, y, nthread=nthread, enable_categorical=bool(spec.get("categorical")))
            dtest = xgb.QuantileDMatrix(X_test, y_test, ref=dtrain, nthread=nthread,
                                        enable_categorical=bool(spec.get("categorical")))
            log: dict = {}
            booster = xgb.train(params, dtrain, num_boost_round=int(spec["rounds"]), evals=[(dtest, "holdout")],
                                evals_result=log, verbose_eval=False, callbacks=[callback])
            callback.poster.flush()
            history = _xgb_history(log, 0)
            if callback.pruned:
                return {"pruned": True, "steps": len(history), "worker": _progress.worker_name(),
                        "seconds": time.perf_counter() - started}
            out = holdout_metrics(spec["task"], np.asarray(y_test), booster.inplace_predict(X_test))
            value = out[spec["metric"]]
            model = bytes(booster.save_raw("ubj")) if _improves(spec, value) else None
            return {"pruned": False, "value": value, "metrics": out, "history": history, "model": model,
                    "steps": len(history), "threads": nthread, "worker": _progress.worker_name(),
                    "seconds": time.perf_counter() - started}
    finally:
        _forget(key)


def torch_trial(X: Any, y: Any, X_test: Any, y_test: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Train one PyTorch trial in this worker (one rank, ``spec["nthread"]`` threads); its outcome."""
    from .torch_rank import train_rank

    started = time.perf_counter()
    key = spec["key"]
    poster = _Poster({**spec, "post_interval": 0.0})  # one message per epoch: epochs are slow enough
    epochs = [0]

    def report(msg: dict[str, Any]) -> None:
        if msg.get("beat"):
            return
        epochs[0] = int(msg["epoch"])
        row = (msg.get("rows") or [{}])[-1]
        poster.add(int(msg["epoch"]), float(row.get(spec["metric"], float("nan"))), force=True)
        if _stopped(key):
            raise _Pruned()

    rank_spec = {**spec, "worker_name": _progress.worker_name(), "checkpoints": {"every": 0}, "gpu": False}
    try:
        out = train_rank(0, 1, X, y, X_test, y_test, rank_spec, report)
    except _Pruned:
        return {"pruned": True, "steps": epochs[0], "worker": _progress.worker_name(),
                "seconds": time.perf_counter() - started}
    finally:
        _forget(key)
    history = out["history"] or []
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "loss")} if history else {}
    value = final.get(spec["metric"], float("nan"))
    return {"pruned": False, "value": value, "metrics": final, "history": history,
            "model": out["state"] if _improves(spec, value) else None, "steps": len(history),
            "threads": int(spec["nthread"]),
            "worker": _progress.worker_name(), "seconds": time.perf_counter() - started}


def _improves(spec: dict[str, Any], value: float) -> bool:
    """Whether this trial beats the best the study had when it was submitted: only then is its model
    sent back (a later best has beaten that too, so the kernel always holds the best one's model)."""
    best = spec.get("best")
    if best is None:
        return True
    return value > best if spec.get("direction") == "maximize" else value < best


def model_factory(factory: Any, kwargs: dict[str, Any]) -> Any:
    """A factory that builds the user's model with the trial's model parameters."""
    return functools.partial(factory, **kwargs)
