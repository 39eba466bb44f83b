"""Notebook views of a cluster's allocation: a live widget, static HTML and plain text."""

from __future__ import annotations

import html
import threading
import time
import weakref
from typing import Any

from dask.utils import format_bytes

from . import config
from .cluster.allocation import Snapshot

SITE_COLOURS = {"cloud": "#3b6fb6", "edge": "#2f9e6e", "unknown": "#888888"}


def _pct(used: float, total: float) -> float:
    return round(100.0 * used / total, 1) if total else 0.0


# The sidebar's look, inline so that it holds wherever the output is shown (JupyterLab's
# variables with fallbacks for other frontends and exported HTML).
_CHIP = {"cloud": "var(--jp-brand-color3, #bbdefb)", "edge": "var(--jp-success-color3, #c8e6c9)",
         "gpu": "var(--jp-warn-color3, #ffe0b2)"}
_MUTED = "color:var(--jp-ui-font-color2, #616161);font-size:var(--jp-ui-font-size0, 11px)"
_CELL = "padding:2px 8px 2px 4px;border-bottom:1px solid var(--jp-border-color3, #eeeeee);text-align:left"
_HEAD = f"{_CELL};{_MUTED};font-weight:normal"


def chip(text: str, kind: str = "") -> str:
    """A small rounded label, coloured by site kind like the sidebar's."""
    background = _CHIP.get(kind, "var(--jp-layout-color3, #e0e0e0)")
    return (f"<span style='background:{background};border-radius:8px;padding:0 6px;margin-right:4px;"
            f"font-size:var(--jp-ui-font-size0, 11px);line-height:1.5;display:inline-block'>"
            f"{html.escape(str(text))}</span>")


def bar(percent: float, label: str, colour: str = "var(--jp-brand-color2, #64b5f6)") -> str:
    """A horizontal bar with its label on it, red past 90 %, amber past 70 %."""
    width = max(0.0, min(100.0, percent))
    if width > 90:
        colour = "var(--jp-error-color2, #e57373)"
    elif width > 70:
        colour = "var(--jp-warn-color2, #ffb74d)"
    return (f"<div style='position:relative;min-width:110px;height:14px;border-radius:2px;overflow:hidden;"
            f"background:var(--jp-layout-color3, #e0e0e0)'><div style='width:{width:.1f}%;height:100%;"
            f"background:{colour}'></div><span style='position:absolute;left:4px;top:0;line-height:14px;"
            f"font-size:var(--jp-ui-font-size0, 11px);white-space:nowrap'>{html.escape(label)}</span></div>")


def memory_short(used: int, limit: int) -> str:
    """``"0.1/2.0 GiB"``: both in the limit's unit, short enough for a bar's label."""
    if limit <= 0:
        return format_bytes(used)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    power = 0
    while limit / 1024 ** power >= 1024 and power < len(units) - 1:
        power += 1
    unit, scale = units[power], 1024 ** power
    digits = 0 if unit == "B" or limit / scale >= 100 else 1
    return f"{used / scale:.{digits}f}/{limit / scale:.{digits}f} {unit}"


class Html(str):
    """A table cell that is already HTML (everything else is escaped)."""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(c: Any, tag: str, style: str) -> str:
        return f"<{tag} style='{style}'>{c if isinstance(c, Html) else html.escape(str(c))}</{tag}>"

    head = "".join(cell(h, "th", _HEAD) for h in headers)
    body = "".join("<tr>" + "".join(cell(c, "td", _CELL) for c in row) + "</tr>" for row in rows)
    return (f"<table class='lepton-table' style='border-collapse:collapse;margin:4px 0 8px'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _cost(per_hour: float) -> str:
    """``"$0.50/h"``; empty where no cost is set."""
    return f"${per_hour:.2f}/h" if per_hour else ""


def _with_costs(snap: Snapshot) -> bool:
    return any(s.cost_per_hour for s in snap.sites)


def _heading(text: str) -> str:
    return f"<div style='font-weight:600;margin:8px 0 2px'>{html.escape(text)}</div>"


#: Dashboard panes linked from a cluster view: (label, pane id of the sidebar's command, dashboard page).
DASHBOARD_PANES = (("task stream", "task-stream", "individual-task-stream"),
                   ("progress", "progress", "individual-progress"),
                   ("workers", "workers", "individual-workers"),
                   ("memory", "memory", "individual-workers-memory"))


def dashboard_links(dashboard: str, cluster: str = "") -> str:
    """Links to the dashboard: through the Jupyter server (``.../lepton/dashboard/<id>/status``),
    its panes too, which the Lepton extension opens as JupyterLab tabs (a browser tab elsewhere)."""
    if not dashboard:
        return ""
    whole = f"<a href='{html.escape(dashboard)}' target='_blank' rel='noopener'>Dask dashboard</a>"
    root, _, _ = dashboard.rpartition("/")
    proxied = root.rpartition("/")[0].endswith("/lepton/dashboard")
    if not proxied:
        return f" · {whole}"
    cluster_id = root.rpartition("/")[2]
    panes = []
    for label, pane, page in DASHBOARD_PANES:
        panes.append(f"<a href='{html.escape(root)}/{page}' target='_blank' rel='noopener' "
                     f"data-lepton-pane='{pane}' data-lepton-cluster='{html.escape(cluster_id)}' "
                     f"data-lepton-cluster-name='{html.escape(cluster or cluster_id)}'>{label}</a>")
    return f" · {whole}: {' · '.join(panes)}"


def header_html(snap: Snapshot, title: str = "", dashboard: str = "") -> str:
    t = snap.totals
    link = dashboard_links(dashboard, snap.cluster)
    parts = [f"{t.workers} workers", f"{t.nthreads} threads",
             f"memory {format_bytes(t.memory_used)} / {format_bytes(t.memory_limit)}",
             f"{t.gpus} GPUs", f"{t.processing} tasks running"]
    if t.cost_per_hour:
        parts.append(_cost(t.cost_per_hour))
    return (
        f"<div class='lepton-header' style='margin-bottom:4px'><b>{html.escape(title or snap.cluster)}</b> "
        f"<code style='{_MUTED}'>{html.escape(snap.scheduler)}</code>{link}"
        f"<div style='{_MUTED}'>{html.escape(' · '.join(parts))}</div></div>"
    )


def sites_rows(snap: Snapshot) -> list[list[Any]]:
    costs = _with_costs(snap)
    return [[s.name, s.kind, s.workers, s.nthreads,
             f"{format_bytes(s.memory_used)} / {format_bytes(s.memory_limit)}", s.gpus, s.processing]
            + ([_cost(s.cost_per_hour)] if costs else []) for s in snap.sites]


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


def _site_head(snap: Snapshot) -> list[str]:
    return SITE_HEAD if _with_costs(snap) else SITE_HEAD[:-1]


def _sites_html(snap: Snapshot) -> str:
    rows = [[Html(chip(s.kind, s.kind) + html.escape(s.name)), s.workers, s.nthreads,
             Html(bar(_pct(s.memory_used, s.memory_limit), memory_short(s.memory_used, s.memory_limit),
                      "var(--jp-success-color2, #66bb6a)")),
             Html(chip(f"{s.gpus} GPU", "gpu")) if s.gpus else "", s.processing]
            + ([_cost(s.cost_per_hour)] if _with_costs(snap) else []) for s in snap.sites]
    return _table(["site", "workers", "threads", "memory", "GPUs", "tasks"]
                  + (["cost"] if _with_costs(snap) else []), rows)


def _workers_html(snap: Snapshot) -> str:
    rows = [[Html(chip(w.site, w.kind) + html.escape(w.name)), w.nthreads,
             Html(bar(w.cpu, f"{w.cpu:.0f}%")),
             Html(bar(_pct(w.memory_used, w.memory_limit), memory_short(w.memory_used, w.memory_limit),
                      "var(--jp-success-color2, #66bb6a)")),
             ", ".join(f"{g.name} {g.utilization or 0:.0f}%" for g in w.gpus) or "–",
             w.processing, ", ".join(f"{j}×{n}" for j, n in w.jobs.items()) or "–"]
            for w in snap.workers]
    return _table(["worker", "threads", "CPU", "memory", "GPU", "tasks", "jobs"], rows)


def _jobs_html(snap: Snapshot) -> str:
    if not snap.jobs:
        return _heading("Jobs") + f"<div style='{_MUTED};font-style:italic'>no job running</div>"
    rows = [[j.name, j.tasks, Html("".join(chip(s) for s in j.sites)), ", ".join(j.workers),
             ", ".join(f"{k}={v:g}" for k, v in sorted(j.resources.items()))] for j in snap.jobs]
    return _heading("Jobs") + _table(JOB_HEAD, rows)


def snapshot_html(snap: Snapshot, title: str = "", dashboard: str = "") -> str:
    """A static HTML view of one snapshot (for ``_repr_html_`` and non-widget frontends)."""
    return (
        f"<div class='lepton-allocation'>{header_html(snap, title, dashboard)}"
        f"{_heading('Sites')}{_sites_html(snap)}{_heading('Workers')}{_workers_html(snap)}"
        f"{_jobs_html(snap)}</div>"
    )


def snapshot_text(snap: Snapshot) -> str:
    """The same view as plain text."""

    def fmt(headers, rows):
        cols = [headers] + [[str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cols)

    t = snap.totals
    cost = f", {_cost(t.cost_per_hour)}" if t.cost_per_hour else ""
    parts = [
        f"{snap.cluster} {snap.scheduler}: {t.workers} workers, {t.nthreads} threads, "
        f"{t.gpus} GPUs, {t.processing} tasks{cost}",
        fmt(_site_head(snap), sites_rows(snap)),
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
        self.tables.value = f"{_heading('Sites')}{_sites_html(snap)}{_jobs_html(snap)}"
        self.updates += 1
        self.last = snap
        return snap

    def close(self) -> None:
        """Stop refreshing and remove the widget."""
        self._stop.set()
        self.widget.close()

    def freeze(self, reason: str) -> None:
        """Stop refreshing but keep the widget, showing its last snapshot and why it stopped."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.interval + 5)
        when = time.strftime("%H:%M:%S")
        self.header.value += (f"<div class='lepton-stopped' style='{_MUTED}'>{html.escape(reason)} at {when}; "
                              "the view shows the last snapshot</div>")

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
