"""What a tuning run returns: the best trial as a training result, naming its study and trial."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..reprs import render
from .train import TrainResult

__all__ = ["TuneResult", "trials_rows"]


@dataclass
class TuneResult(TrainResult):
    """The best trial of a study, as a :class:`~lepton_lab.ml.train.TrainResult`.

    ``compress`` and ``publish`` take it like any training result; ``lineage``
    (recorded by ``publish`` in the manifest) names the study, its team and the
    trial. ``study_name``/``trial`` say which trial this is, ``params`` its
    hyper-parameters, ``value`` its objective; ``n_complete``, ``n_pruned`` and
    ``n_failed`` count the study's trials so far. ``.study`` is the Optuna study.
    """

    study_name: str = ""
    trial: int = -1
    team: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    value: float = math.nan
    metric: str = ""
    direction: str = ""
    sampler: str = ""
    pruner: str = ""
    space: str = ""
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    ran_now: int = 0

    def __post_init__(self) -> None:
        self.study: Any = None

    @property
    def lineage(self) -> dict[str, Any]:
        """What the registry records of where this model came from: the study and its best trial."""
        return {"tuning": {"study": self.study_name, "team": self.team, "trial": self.trial,
                           "params": dict(self.params), "value": self.value, "metric": self.metric,
                           "direction": self.direction, "sampler": self.sampler, "pruner": self.pruner,
                           "space": self.space, "trials_complete": self.n_complete,
                           "trials_pruned": self.n_pruned}}

    def trials(self) -> list[dict[str, Any]]:
        """One row per trial of the study: number, state, value, params, steps, worker, seconds."""
        return trials_rows(self.study) if self.study is not None else []

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return (f"<TuneResult study {self.study_name!r} best trial #{self.trial} {self.metric}={self.value:.4f} "
                f"({params}); {self.n_complete} complete, {self.n_pruned} pruned, {self.n_failed} failed>")

    def _repr_html_(self) -> str:
        return render("tune_result", r=self)


def trials_rows(study: Any) -> list[dict[str, Any]]:
    """The trials of an Optuna study as plain rows (what the live view and ``trials()`` show)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        steps = max(t.intermediate_values) if t.intermediate_values else None
        out.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
                    "steps": steps, "worker": t.user_attrs.get("worker", ""), "seconds": seconds})
    return out


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
