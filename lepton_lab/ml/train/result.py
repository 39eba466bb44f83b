"""The result of a training, and the error a training that cannot finish raises."""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from typing import Any

from ...errors import ClusterError


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

    def _repr_html_(self) -> str:
        unit = "rounds" if self.kind == "xgboost" else "epochs"
        rows = [
            ("model", f"{self.kind} ({self.task}), {len(self.history)} {unit}"),
            ("holdout", ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())),
            ("strategy", self.strategy),
            ("workers", f"{', '.join(self.workers)} on {self.site}"),
            ("time", f"{self.duration_s:.1f} s"),
            ("resumed from", "—" if self.resumed_from is None
             else f"{unit[:-1]} {self.resumed_from} ({self.restarts} restart(s))"),
            ("checkpoints", self.checkpoints or "—"),
            ("data", f"{self.input_schema.get('shape')} sha256 {self.data_fingerprint[:16]}…"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return (f"<div class='lepton-train'><b>Lepton training {html.escape(self.name)}</b>"
                f"<table>{body}</table></div>")
