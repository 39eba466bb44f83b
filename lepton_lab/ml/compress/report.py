"""What a compression did: sizes, latencies and the metric before and after, as a table, HTML and a figure."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from lepton_lab.config import COMPRESSION_TOLERANCE
from lepton_lab.errors import LeptonError
from lepton_lab.reprs import render

#: Below this many milliseconds a call, latency is mostly the call's own overhead.
OVERHEAD_MS = 1.0
#: A speed-up below this counts as slower (under it, the difference is measurement noise).
SLOWER = 0.95


class CompressionRefused(LeptonError):
    """The compressed model loses more than the tolerance; ``err.report`` has the numbers."""

    status = 422

    def __init__(self, message: str, report: CompressionReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class Measurement:
    """One side (before or after) of a compression."""

    size_bytes: int
    latency_ms_batch1: float | None = None
    latency_ms_batch64: float | None = None
    metric: float | None = None


@dataclass
class CompressionReport:
    """What a compression did: sizes, latencies and the metric before and after.

    Accuracy and AUC are in percent and their change in points; RMSE changes are
    relative, in percent of the RMSE before. ``to_dict()`` is JSON-ready,
    ``table()`` a pandas DataFrame, ``figure()`` a plotly figure.
    """

    framework: str
    steps: list[str]
    before: Measurement
    after: Measurement
    metric_name: str | None = None
    tolerance: float = COMPRESSION_TOLERANCE
    backend: str | None = None
    forced: bool = False
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    # ratios and changes -----------------------------------------------------
    @property
    def size_ratio(self) -> float:
        """How many times smaller the saved model is."""
        return self.before.size_bytes / max(self.after.size_bytes, 1)

    @property
    def speedup_batch1(self) -> float | None:
        return _ratio(self.before.latency_ms_batch1, self.after.latency_ms_batch1)

    @property
    def speedup_batch64(self) -> float | None:
        return _ratio(self.before.latency_ms_batch64, self.after.latency_ms_batch64)

    @property
    def metric_unit(self) -> str:
        return "%" if self.metric_name == "rmse" else "points"

    @property
    def metric_change(self) -> float | None:
        """After minus before: points for accuracy/AUC, relative % for RMSE."""
        b, a = self.before.metric, self.after.metric
        if b is None or a is None:
            return None
        if self.metric_name == "rmse":
            return (a - b) / b * 100 if b else 0.0
        return a - b

    @property
    def metric_loss(self) -> float | None:
        """How much worse the metric got, in the tolerance's unit (negative: better)."""
        change = self.metric_change
        if change is None:
            return None
        return change if self.metric_name == "rmse" else -change

    @property
    def within_tolerance(self) -> bool:
        loss = self.metric_loss
        return loss is None or loss <= self.tolerance + 1e-9

    @property
    def label(self) -> str:
        return "+".join(self.steps)

    def refusal(self, keep: str = "force=True") -> str:
        """The one-line reason this compression is over the tolerance; ``keep`` says how to keep it anyway."""
        name, b, a = self.metric_name, self.before.metric, self.after.metric
        verb = "raises" if name == "rmse" else "drops"
        change = self.metric_change
        assert change is not None, "only a measured change is refused"
        sign = "+" if change >= 0 else "-"
        return (
            f"{self.label} {verb} {name} from {_fmt_metric(name, b)} to {_fmt_metric(name, a)} "
            f"({sign}{abs(change):.1f} {self.metric_unit} > tolerance "
            f"{_num(self.tolerance)}{' %' if name == 'rmse' else ''}); "
            f"pass {keep} to keep it"
        )

    def notes(self) -> list[str]:
        """Why the compressed model is not faster, when it is slower on a model already small.

        A call that takes well under a millisecond spends it on the call itself (argument
        checks, dispatch, the output's allocation); a smaller model saves only compute,
        and int8 or a sliced booster add a little work per call.
        """
        out = []
        for batch, before, after, speedup in (
                (1, self.before.latency_ms_batch1, self.after.latency_ms_batch1, self.speedup_batch1),
                (64, self.before.latency_ms_batch64, self.after.latency_ms_batch64, self.speedup_batch64)):
            if speedup is None or speedup >= SLOWER or before is None or before >= OVERHEAD_MS:
                continue
            out.append(
                f"batch {batch} is {1 / speedup:.2f}x slower ({before:.3g} -> {after:.3g} ms): "
                f"batch-{batch} latency is dominated by call overhead at this size "
                f"({_size(self.before.size_bytes)}, under {OVERHEAD_MS:g} ms a call), not by the "
                f"model's arithmetic, so a smaller model cannot make it faster")
        return out

    # serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields plus the derived ratios."""
        out = asdict(self)
        out.update(
            size_ratio=self.size_ratio,
            speedup_batch1=self.speedup_batch1,
            speedup_batch64=self.speedup_batch64,
            metric_change=self.metric_change,
            metric_unit=self.metric_unit,
            notes=self.notes(),
        )
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionReport:
        """Inverse of ``to_dict`` (derived ratios are recomputed, not read)."""
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["before"] = Measurement(**data["before"])
        kwargs["after"] = Measurement(**data["after"])
        return cls(**kwargs)

    # views ---------------------------------------------------------------------
    def table(self):
        """A pandas DataFrame: one row per quantity, columns before / after / change."""
        import pandas as pd

        b, a = self.before, self.after
        rows = [
            ("size (bytes)", b.size_bytes, a.size_bytes, _times(self.size_ratio, "smaller", "larger")),
            ("latency batch 1 (ms)", b.latency_ms_batch1, a.latency_ms_batch1,
             _times(self.speedup_batch1, "faster", "slower")),
            ("latency batch 64 (ms)", b.latency_ms_batch64, a.latency_ms_batch64,
             _times(self.speedup_batch64, "faster", "slower")),
        ]
        if self.metric_name:
            change = self.metric_change
            rows.append((
                self.metric_name + (" (%)" if self.metric_name != "rmse" else ""),
                b.metric, a.metric,
                "" if change is None else f"{change:+.2f} {self.metric_unit}",
            ))
        frame = pd.DataFrame(rows, columns=["", "before", "after", "change"]).set_index("")
        frame.index.name = None
        return frame

    def _headline(self) -> str:
        backend = f" [{self.backend}]" if self.backend else ""
        verdict = ("ok" if self.within_tolerance
                   else "over tolerance, kept by force=True" if self.forced else "over tolerance")
        tol = (f"tolerance {_num(self.tolerance)} {self.metric_unit}" if self.metric_name
               else "no metric")
        return f"{self.framework} {self.label}{backend}: {verdict} ({tol}, {self.seconds:.1f} s)"

    def __str__(self) -> str:
        frame = self.table().map(_cell)
        notes = "".join(f"\nnote: {n}" for n in self.notes())
        return self._headline() + "\n" + frame.to_string() + notes

    def _repr_html_(self) -> str:
        frame = self.table().map(_cell)
        return render("compression_report", headline=self._headline(), columns=list(frame.columns),
                      rows=list(zip(frame.index, frame.values.tolist())), notes=self.notes())

    def figure(self):
        """A plotly figure: grouped before/after bars for size, latency and the metric."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        titles = ["size (MB)", "latency (ms)", self.metric_name or "metric"]
        fig = make_subplots(rows=1, cols=3, subplot_titles=titles)
        for side, color in (("before", "#8c8c8c"), ("after", "#1f77b4")):
            m: Measurement = getattr(self, side)
            common = dict(name=side, legendgroup=side, marker_color=color)
            fig.add_trace(go.Bar(x=["size"], y=[m.size_bytes / 1e6], **common), 1, 1)
            fig.add_trace(go.Bar(x=["batch 1", "batch 64"],
                                 y=[m.latency_ms_batch1, m.latency_ms_batch64],
                                 showlegend=False, **common), 1, 2)
            fig.add_trace(go.Bar(x=[self.metric_name or "-"], y=[m.metric],
                                 showlegend=False, **common), 1, 3)
        fig.update_layout(barmode="group", title=self._headline(), height=360)
        return fig


def _size(n: int) -> str:
    from dask.utils import format_bytes

    return format_bytes(n)


def _num(value: float) -> str:
    """1.0 stays "1.0", 0.25 stays "0.25"."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"  # byte counts
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ratio(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or after <= 0:
        return None
    return before / after


def _times(ratio: float | None, better: str, worse: str) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def _fmt_metric(name: str | None, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if name == "rmse" else f"{value:.1f}"


class CompressionResult(NamedTuple):
    """The compressed model and its report; unpacks as ``model, report = compress(...)``."""

    model: Any
    report: CompressionReport

    def _repr_html_(self) -> str:
        return self.report._repr_html_()
