"""The live view of a study: a trials table and Optuna's own plotly figures, refreshed while it runs.

In a notebook with widgets it is an ``ipywidgets`` box (status line, trials
table, and tabs for the optimisation history, parallel coordinates and
parameter importances) that the tuning loop refreshes; without a widget
frontend, the HTML and text reprs show the trials as they were at the last
refresh, and say so.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..errors import first_line
from ..reprs import render
from .tune_result import trials_rows

__all__ = ["StudyView"]

#: Rows of the trials table shown (the best first, then the latest).
MAX_ROWS = 20
FIGURES = (("history", "plot_optimization_history"), ("parallel coordinates", "plot_parallel_coordinate"),
           ("importances", "plot_param_importances"))


class StudyView:
    """A study's trials and figures; ``refresh(study)`` redraws it, ``widget`` is the ipywidgets box."""

    def __init__(self, name: str, metric: str, direction: str, *, widgets: bool = True):
        self.name, self.metric, self.direction = name, metric, direction
        self.rows: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.refreshed = 0.0
        self.widget: Any = None
        self.figure_errors: dict[str, str] = {}
        if widgets:
            self._build()

    def _build(self) -> None:
        try:
            import ipywidgets as w
        except ImportError:
            return
        self.status = w.HTML(value=render("study_status", line=f"study {self.name}: starting"))
        self.table = w.HTML(value="")
        self.outputs = [w.Output() for _ in FIGURES]
        tabs = w.Tab(children=self.outputs)
        for i, (title, _) in enumerate(FIGURES):
            tabs.set_title(i, title)
        self.widget = w.VBox([self.status, self.table, tabs])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.widget is not None:
            display(self.widget)
        else:
            display({"text/plain": repr(self), "text/html": self._repr_html_()}, raw=True)

    # -- refreshing ------------------------------------------------------------------------

    def refresh(self, study: Any, *, figures: bool = False) -> None:
        """Read the study's trials now; redraw the table, and the figures when ``figures``."""
        self.rows = trials_rows(study)
        done = [r for r in self.rows if r["state"] == "complete" and r["value"] is not None]
        pick = max if self.direction == "maximize" else min
        self.best = pick(done, key=lambda r: r["value"]) if done else None
        self.refreshed = time.time()
        if self.widget is None:
            return
        self.status.value = self._status_html()
        self.table.value = self._table_html()
        if figures:
            self._draw(study)

    def _draw(self, study: Any) -> None:
        import optuna.visualization as vis
        from IPython.display import display

        complete = sum(1 for r in self.rows if r["state"] == "complete")
        for out, (title, fn) in zip(self.outputs, FIGURES):
            if complete < (2 if fn == "plot_param_importances" else 1):
                continue
            try:
                fig = getattr(vis, fn)(study)
            except Exception as e:  # a figure Optuna cannot draw yet (one distinct value, say)
                self.figure_errors[title] = first_line(e, named=True)
                continue
            self.figure_errors.pop(title, None)
            with out:
                out.clear_output(wait=True)
                display(fig)

    def figures(self, study: Any) -> dict[str, Any]:
        """Optuna's figures of ``study`` (plotly), by title; those it cannot draw yet are left out."""
        import optuna.visualization as vis

        out = {}
        for title, fn in FIGURES:
            try:
                out[title] = getattr(vis, fn)(study)
            except Exception:
                pass
        return out

    # -- text and HTML ---------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def _status_line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "no trials yet"
        best = (f"; best #{self.best['number']} {self.metric}={self.best['value']:.4g}" if self.best else "")
        return f"study {self.name} ({self.direction} {self.metric}): {counts}{best}"

    def _status_html(self) -> str:
        return render("study_status", line=self._status_line())

    def _shown(self) -> list[dict[str, Any]]:
        rows = sorted(self.rows, key=lambda r: -r["number"])
        if self.best is not None:
            rows = [self.best] + [r for r in rows if r is not self.best]
        return rows[:MAX_ROWS]

    def _trials(self) -> dict[str, Any]:
        """What the trials table shows: the metric, the parameters' names, the rows, the best, how many are left out."""
        return {"metric": self.metric, "params": sorted({k for r in self.rows for k in r["params"]}),
                "shown": self._shown(), "best": self.best, "more": len(self.rows) - MAX_ROWS}

    def _table_html(self) -> str:
        return render("study_trials", **self._trials())

    def _when(self) -> str:
        if not self.refreshed:
            return "not refreshed yet"
        return "as of " + time.strftime("%H:%M:%S", time.localtime(self.refreshed))

    def __repr__(self) -> str:
        lines = [f"{self._status_line()} ({self._when()})"]
        for r in self._shown():
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
            lines.append(f"  #{r['number']:<4} {r['state']:<9} {_fmt(r['value']):>10}  {params}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return render("study_view", line=self._status_line(), when=self._when(), **self._trials())


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)
