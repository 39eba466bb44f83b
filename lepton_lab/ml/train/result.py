"""The result of a training, and the error a training that cannot finish raises."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ...errors import ClusterError
from ...reprs import render


class TrainingError(ClusterError):
    """A training could not finish: a worker kept dying, the site emptied, or the task failed."""


@dataclass
class TrainResult:
    """A trained model and how it came about.

    ``metrics`` are measured on the holdout (AUC and accuracy for a binary
    target, accuracy for several classes, RMSE for a number); ``history`` holds
    one row per round or epoch; ``data_fingerprint`` (SHA-256 of the training
    data) and ``input_schema`` are the lineage the model registry records.
    """

    name: str
    kind: str
    model: Any
    metrics: dict[str, float]
    history: list[dict[str, float]]
    strategy: str
    workers: list[str]
    site: str
    duration_s: float
    checkpoints: str
    resumed_from: int | None
    data_fingerprint: str
    input_schema: dict[str, Any]
    task: str = ""
    classes: list[Any] | None = None
    restarts: int = 0
    progress_events: int = 0
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (everything but the model and the history)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("model", "history")}
        out["steps"] = len(self.history)
        return out

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        resumed = f", resumed from {self.resumed_from}" if self.resumed_from is not None else ""
        return (f"<TrainResult {self.name!r} {self.kind} {self.task} [{metrics}] on {self.site} "
                f"({', '.join(self.workers)}) in {self.duration_s:.1f} s{resumed}>")

    def _stopped(self) -> str:
        best = self.model.attr("best_iteration") if self.kind == "xgboost" and hasattr(self.model, "attr") else None
        return "" if best is None else f", stopped early: best round {int(best) + 1}"

    def _repr_html_(self) -> str:
        return render("train_result", r=self, stopped=self._stopped())
