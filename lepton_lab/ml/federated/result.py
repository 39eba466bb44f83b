"""What a federated run returns: the global model, one record per round, privacy and lineage, and their reprs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ...reprs import render

if TYPE_CHECKING:
    from torch import nn


@dataclass
class RoundRecord:
    """One round as the coordinator saw it. Counts and metrics only, never a sample."""

    round: int
    sites: list[str]  # sampled for the round
    aggregated: list[str]  # whose updates are in the new global model
    dropped: dict[str, str]  # site -> "phase: reason"
    unavailable: list[str]
    site_metrics: dict[str, dict[str, float]]
    global_metrics: dict[str, float]
    epsilon: float | None
    skipped: str | None  # why the global model was left as it was, if it was
    rekeyed: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: keys, train, unmask, eval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FederatedResult:
    """The outcome of :func:`federate`: the global model, per-round history, privacy and lineage."""

    model: nn.Module
    history: list[RoundRecord]
    rounds: int
    strategy: str
    secure: bool
    dp: dict[str, Any] | None
    sites: list[str]
    lineage: dict[str, Any]
    name: str = ""
    seconds: float = 0.0

    @property
    def completed_rounds(self) -> int:
        return sum(1 for r in self.history if r.skipped is None)

    @property
    def dropped_sites(self) -> dict[int, dict[str, str]]:
        """Round -> {site: reason} for every round where a site dropped."""
        return {r.round: dict(r.dropped) for r in self.history if r.dropped}

    @property
    def epsilon(self) -> float | None:
        return None if self.dp is None else self.dp["epsilon"]

    def metric(self, name: str = "accuracy") -> list[float | None]:
        """The global metric after each round (None where there was no eval data)."""
        return [r.global_metrics.get(name) for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rounds": self.rounds, "strategy": self.strategy, "secure": self.secure,
                "dp": self.dp, "sites": self.sites, "seconds": self.seconds,
                "history": [r.to_dict() for r in self.history], "lineage": self.lineage}

    def __repr__(self) -> str:
        acc = next((r.global_metrics.get("accuracy") for r in reversed(self.history) if r.global_metrics), None)
        eps = f", ε={self.dp['epsilon']:.2f} (δ={self.dp['delta']:g})" if self.dp else ""
        acc_s = f", accuracy {acc:.3f}" if acc is not None else ""
        return (f"<FederatedResult {self.name!r} {self.strategy} {'secure ' if self.secure else ''}"
                f"{self.completed_rounds}/{self.rounds} rounds over {len(self.sites)} sites{acc_s}{eps}>")

    def _repr_html_(self) -> str:
        return render("federated_result", r=self)
