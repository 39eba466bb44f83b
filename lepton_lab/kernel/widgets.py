"""Notebook views of a cluster's allocation: a live widget, static HTML and plain text."""

from __future__ import annotations

import html
import threading
import weakref
from typing import Any

from dask.utils import format_bytes

from .. import config
from ..cluster.allocation import Snapshot

SITE_COLOURS = {"cloud": "#3b6fb6", "edge": "#2f9e6e", "unknown": "#888888"}


def _pct(used: float, total: float) -> float:
    return round(100.0 * used / total, 1) if total else 0.0


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table class='lepton-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def header_html(snap: Snapshot, title: str = "", dashboard: str = "") -> str:
    t = snap.totals
    link = f" · <a href='{html.escape(dashboard)}' target='_blank'>Dask dashboard</a>" if dashboard else ""
    return (
        f"<div class='lepton-header'><b>{html.escape(title or snap.cluster)}</b> "
        f"<code>{html.escape(snap.scheduler)}</code>{link}<br>"
        f"{t.workers} workers · {t.nthreads} threads · memory {format_bytes(t.memory_used)} / "
        f"{format_bytes(t.memory_limit)} · {t.gpus} GPUs · {t.processing} tasks running · "
        f"${t.cost_per_hour:.2f}/h</div>"
    )


def sites_rows(snap: Snapshot) -> list[list[Any]]:
    return [[s.name, s.kind, s.workers, s.nthreads,
             f"{format_bytes(s.memory_used)} / {format_bytes(s.memory_limit)}", s.gpus, s.processing,
             f"${s.cost_per_hour:.2f}/h"] for s in snap.sites]


def workers_rows(snap: Snapshot) -> list[list[Any]]:
    return [[w.site, w.name, w.nthreads, f"{w.cpu:.0f}%",
             f"{format_bytes(w.memory_used)} / {format_bytes(w.memory_limit)}",
             ", ".join(f"{g.name} {g.utilization or 0:.0f}%" for g in w.gpus) or "-",
             w.processing, ", ".join(f"{j}×{n}" for j, n in w.jobs.items()) or "-"]
            for w in snap.workers]


def jobs_rows(snap: Snapshot) -> list[list[Any]]:
    return [[j.name, j.tasks, ", ".join(j.sites), ", ".join(j.workers),
             ", ".join(f"{k}={v:g}" for k, v in sorted(j.resources.items()))] for j in snap.jobs]


SITE_HEAD = ["site", "kind", "workers", "threads", "memory", "GPUs", "tasks", "cost"]
WORKER_HEAD = ["site", "worker", "threads", "CPU", "memory", "GPU", "tasks", "jobs"]
JOB_HEAD = ["job", "tasks", "sites", "workers", "holds"]


def snapshot_html(snap: Snapshot, title: str = "", dashboard: str = "") -> str:
    """A static HTML view of one snapshot (for ``_repr_html_`` and non-widget frontends)."""
    jobs = _table(JOB_HEAD, jobs_rows(snap)) if snap.jobs else "<i>no job running</i>"
    return (
        f"<div class='lepton-allocation'>{header_html(snap, title, dashboard)}"
        f"{_table(SITE_HEAD, sites_rows(snap))}{_table(WORKER_HEAD, workers_rows(snap))}"
        f"<b>Jobs</b>{jobs}</div>"
    )


def snapshot_text(snap: Snapshot) -> str:
    """The same view as plain text."""

    def fmt(headers, rows):
        cols = [headers] + [[str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cols)

    t = snap.totals
    parts = [
        f"{snap.cluster} {snap.scheduler}: {t.workers} workers, {t.nthreads} threads, "
        f"{t.gpus} GPUs, {t.processing} tasks, ${t.cost_per_hour:.2f}/h",
        fmt(SITE_HEAD, sites_rows(snap)),
        fmt(WORKER_HEAD, workers_rows(snap)),
        fmt(JOB_HEAD, jobs_rows(snap)) if snap.jobs else "no job running",
    ]
    return "\n\n".join(parts)


def figure_data(snap: Snapshot) -> dict[str, Any]:
    """Bar data per worker, grouped by site: CPU %, memory % of limit, tasks."""
    x = [[w.site for w in snap.workers], [w.name for w in snap.workers]]
    return {
        "x": x,
        "cpu": [round(w.cpu, 1) for w in snap.workers],
        "memory": [_pct(w.memory_used, w.memory_limit) for w in snap.workers],
        "tasks": [w.processing for w in snap.workers],
        "colors": [SITE_COLOURS.get(w.kind, "#888") for w in snap.workers],
    }


class AllocationView:
    """A live view of a cluster: totals, per-worker bars grouped by site, sites and jobs tables.

    Refreshed every ``interval`` seconds by a background thread that stops when the
    view is closed, when it is garbage-collected, or when the cluster goes away.
    """

    def __init__(self, handle: Any, interval: float = config.REFRESH_INTERVAL, start: bool = True):
        import ipywidgets as widgets
        import pandas  # noqa: F401  (plotly imports it lazily; finish that before the refresh thread runs)
        import plotly.graph_objects as go

        self.handle = handle
        self.interval = interval
        self.updates = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self.header = widgets.HTML()
        self.tables = widgets.HTML()
        self.figure = go.FigureWidget(
            data=[
                go.Bar(name="CPU %", x=[[], []], y=[]),
                go.Bar(name="memory % of limit", x=[[], []], y=[]),
            ],
            layout=go.Layout(barmode="group", height=300, margin=dict(l=40, r=10, t=30, b=60),
                             yaxis=dict(range=[0, 100], title="%"), title="Workers by site"),
        )
        self.widget = widgets.VBox([self.header, self.figure, self.tables])
        self.refresh()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=_loop, args=(weakref.ref(self), self._stop, interval),
                                            name="lepton-allocation-view", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> Snapshot | None:
        """Take one snapshot and redraw; returns it (None when the cluster is gone)."""
        try:
            snap = self.handle.snapshot()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            self.header.value = f"<b>{html.escape(self.handle.name)}</b>: not reachable ({html.escape(self.error)})"
            return None
        data = figure_data(snap)
        with self.figure.batch_update():
            for trace, key in zip(self.figure.data, ("cpu", "memory")):
                trace.x = data["x"]
                trace.y = data[key]
        self.header.value = header_html(snap, f"Lepton cluster {self.handle.name}", self.handle.dashboard_link)
        jobs = _table(JOB_HEAD, jobs_rows(snap)) if snap.jobs else "<i>no job running</i>"
        self.tables.value = f"{_table(SITE_HEAD, sites_rows(snap))}<b>Jobs</b>{jobs}"
        self.updates += 1
        self.last = snap
        return snap

    def close(self) -> None:
        """Stop refreshing and remove the widget."""
        self._stop.set()
        self.widget.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_html_(self) -> str:
        return snapshot_html(self.last, f"Lepton cluster {self.handle.name}", self.handle.dashboard_link)

    def __repr__(self) -> str:
        return snapshot_text(self.last) if getattr(self, "last", None) else f"<AllocationView {self.handle.name}>"


def _loop(ref: "weakref.ref[AllocationView]", stop: threading.Event, interval: float) -> None:
    # Holds only a weak reference, so a view nobody shows any more is collected and the loop ends.
    while not stop.wait(interval):
        view = ref()
        if view is None:
            return
        handle = view.handle
        if getattr(handle, "closed", False) or not view.widget.comm:
            return
        try:
            snap = view.refresh()
        except Exception as e:  # a drawing error must not kill the loop silently: show it, keep going
            view.error = f"{type(e).__name__}: {e}"
            snap = None
        if snap is None and (getattr(handle, "closed", False) or handle.client.status != "running"):
            return
        del view
