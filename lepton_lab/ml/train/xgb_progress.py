"""The XGBoost round callback (progress events, checkpoints) and the per-round history it reads."""

from __future__ import annotations

import time
from typing import Any

from .. import progress as _progress
from ..checkpoints import save_checkpoint as _save_checkpoint
from ..progress import worker_name as _worker_name


def _XGBProgress(*args: Any, **kwargs: Any) -> Any:
    """``xgboost.callback.TrainingCallback``: post progress and write checkpoints (rank 0 only)."""
    return _xgb_callback_class()(*args, **kwargs)


_callback_class: Any = None


def _xgb_callback_class() -> Any:
    # Built on first use so that importing this module (on every worker) does not import xgboost.
    global _callback_class
    if _callback_class is None:
        import xgboost

        _callback_class = type("LeptonXGBCallback", (_XGBProgressBase, xgboost.callback.TrainingCallback), {})
    return _callback_class


class _XGBProgressBase:
    def __init__(self, topic: str, run: str, total: int, checkpoints: dict[str, Any],
                 history: list[dict[str, float]], worker: str = ""):
        self.topic = topic
        self.run = run
        self.total = total
        self.ckpt = checkpoints
        self.prior = list(history)
        self.worker = worker
        self.start_round: int | None = None
        self.sent = 0  # last round posted
        self.sent_at = 0.0
        self.log: dict | None = None

    def __reduce__(self):
        return (_XGBProgress, (self.topic, self.run, self.total, self.ckpt, self.prior, self.worker))

    def before_training(self, model):
        self.start_round = model.num_boosted_rounds()
        return model

    def after_iteration(self, model, epoch, evals_log) -> bool:
        from xgboost import collective

        if collective.get_rank() != 0:
            return False
        done = model.num_boosted_rounds()
        every = self.ckpt.get("every", 0)
        checkpoint = bool(every) and (done % every == 0 or done == self.total)
        now = time.monotonic()
        # At most a few messages a second (every round's metrics ride along): each one wakes
        # the worker's event loop, which stalls the training threads at their next barrier.
        if checkpoint or done == self.total or now - self.sent_at >= _progress.MIN_INTERVAL:
            rows = _xgb_history(evals_log, self.start_round or 0)
            fresh = [r for r in rows if r["round"] > self.sent]
            latest = {k: v for k, v in fresh[-1].items() if k != "round"} if fresh else {}
            _progress.post(self.topic, {"run": self.run, "round": done, "total": self.total, "metrics": latest,
                                        "rows": fresh, "worker_name": self.worker or _worker_name()})
            self.sent, self.sent_at = done, now
        if checkpoint:
            history = self.prior + _xgb_history(evals_log, self.start_round or 0)
            raw = model.save_raw("ubj")
            _save_checkpoint(self.ckpt, "xgboost", done, lambda f: f.write(bytes(raw)), history)
        self.log = evals_log
        return False

    def after_training(self, model):
        # Early stopping ends before the last round: post the rounds not yet shown.
        from xgboost import collective

        done = model.num_boosted_rounds()
        if collective.get_rank() == 0 and done > self.sent and self.log is not None:
            fresh = [r for r in _xgb_history(self.log, self.start_round or 0) if r["round"] > self.sent]
            latest = {k: v for k, v in fresh[-1].items() if k != "round"} if fresh else {}
            _progress.post(self.topic, {"run": self.run, "round": done, "total": self.total, "metrics": latest,
                                        "rows": fresh, "worker_name": self.worker or _worker_name()})
            self.sent = done
        return model


def _xgb_history(evals_log: dict, start: int) -> list[dict[str, float]]:
    data: dict = next(iter(evals_log.values()), {})
    n = max((len(v) for v in data.values()), default=0)
    return [{"round": start + i + 1, **{m: float(v[i]) for m, v in data.items() if i < len(v)}}
            for i in range(n)]
