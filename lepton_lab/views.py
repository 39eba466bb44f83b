"""Notebook views of a cluster's allocation: a live widget, static HTML and plain text."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from dask.utils import format_bytes

from . import config
from .cluster.allocation import JobAllocation, Snapshot, WorkerAllocation
from .reprs import render

SITE_COLOURS = {"cloud": "#3b6fb6", "edge": "#2f9e6e", "unknown": "#888888"}


def _pct(used: float, total: float) -> float:
    return round(100.0 * used / total, 1) if total else 0.0


def _cost(per_hour: float) -> str:
    """``"$0.50/h"``; empty where no cost is set."""
    return f"${per_hour:.2f}/h" if per_hour else ""


def _with_costs(snap: Snapshot) -> bool:
    return any(s.cost_per_hour for s in snap.sites)


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


def duration(seconds: float) -> str:
    """``"4.2 s"``, ``"3m 05s"``, ``"2h 03m"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole // 60 % 60:02d}m"


def job_status(job: JobAllocation) -> str:
    """Where a job stands: ``"done in 4.2 s"``, ``"running 12.0 s"``, ``"waiting"``,
    ``"stopped after 3.1 s"`` (ended with tasks that never finished); erred tasks are named."""
    erred = f", {job.erred} erred" if job.erred else ""
    if job.finished is not None:
        if job.done + job.erred >= job.total:
            return f"done in {duration(job.elapsed)}{erred}"
        return f"stopped after {duration(job.elapsed)}{erred}"
    if job.started is None:
        return f"waiting{erred}"
    return f"running {duration(job.elapsed)}{erred}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """A table in the sidebar's look; every cell is text (``markupsafe.Markup`` for one that is HTML)."""
    return render("cluster_table", headers=headers, rows=rows)


#: Dashboard panes linked from a cluster view: (label, pane id of the sidebar's command, dashboard page).
DASHBOARD_PANES = (("task stream", "task-stream", "individual-task-stream"),
                   ("progress", "progress", "individual-progress"),
                   ("workers", "workers", "individual-workers"),
                   ("memory", "memory", "individual-workers-memory"))


def _links(dashboard: str, cluster: str) -> dict[str, Any] | None:
    """The dashboard's link and, when it goes through the Jupyter server, its panes'."""
    if not dashboard:
        return None
    root, _, _ = dashboard.rpartition("/")
    if not root.rpartition("/")[0].endswith("/lepton/dashboard"):
        return {"href": dashboard, "panes": []}
    cluster_id = root.rpartition("/")[2]
    return {"href": dashboard, "cluster_id": cluster_id, "cluster_name": cluster or cluster_id,
            "panes": [{"label": label, "pane": pane, "href": f"{root}/{page}"}
                      for label, pane, page in DASHBOARD_PANES]}


def dashboard_links(dashboard: str, cluster: str = "") -> str:
    """Links to the dashboard: through the Jupyter server (``.../lepton/dashboard/<id>/status``),
    its panes too, which the Lepton extension opens as JupyterLab tabs (a browser tab elsewhere)."""
    return render("cluster_links", links=_links(dashboard, cluster))


def _header(snap: Snapshot, title: str, dashboard: str) -> dict[str, Any]:
    t = snap.totals
    totals = [f"{t.workers} workers", f"{t.nthreads} threads",
              f"memory {format_bytes(t.memory_used)} / {format_bytes(t.memory_limit)}",
              f"{t.gpus} GPUs", f"{t.processing} tasks running"]
    if t.cost_per_hour:
        totals.append(_cost(t.cost_per_hour))
    return {"title": title or snap.cluster, "scheduler": snap.scheduler, "totals": totals,
            "links": _links(dashboard, snap.cluster)}


def _sites(snap: Snapshot) -> dict[str, Any]:
    return {"costs": _with_costs(snap), "sites": [
        {"name": s.name, "kind": s.kind, "workers": s.workers, "threads": s.nthreads,
         "memory_pct": _pct(s.memory_used, s.memory_limit), "memory": memory_short(s.memory_used, s.memory_limit),
         "gpus": s.gpus, "tasks": s.processing, "cost": _cost(s.cost_per_hour)} for s in snap.sites]}


def _gpus(w: WorkerAllocation) -> str:
    return ", ".join(f"{g.name} {g.utilization or 0:.0f}%" for g in w.gpus)


def _held(w: WorkerAllocation) -> str:
    return ", ".join(f"{j}×{n}" for j, n in w.jobs.items())


def _holds(j: JobAllocation) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(j.resources.items()))


def _workers(snap: Snapshot) -> dict[str, Any]:
    return {"workers": [
        {"name": w.name, "site": w.site, "kind": w.kind, "threads": w.nthreads, "cpu": w.cpu,
         "memory_pct": _pct(w.memory_used, w.memory_limit), "memory": memory_short(w.memory_used, w.memory_limit),
         "gpus": _gpus(w), "tasks": w.processing, "jobs": _held(w)} for w in snap.workers]}


def _jobs(snap: Snapshot) -> dict[str, Any]:
    return {"jobs": [
        {"name": j.name, "done": j.done, "total": j.total, "done_pct": _pct(j.done, j.total),
         "erred_pct": _pct(j.erred, j.total), "status": job_status(j), "tasks": j.tasks, "sites": j.sites,
         "workers": ", ".join(j.workers), "holds": _holds(j)} for j in snap.jobs]}


def header_html(snap: Snapshot, title: str = "", dashboard: str = "") -> str:
    """The view's first lines: its title, scheduler, dashboard links and totals."""
    return render("cluster_header", **_header(snap, title, dashboard))


def tables_html(snap: Snapshot) -> str:
    """The live widget's tables: sites and jobs (its figure shows the workers)."""
    return render("cluster_live", **_sites(snap), **_jobs(snap))


def snapshot_html(snap: Snapshot, title: str = "", dashboard: str = "") -> str:
    """A static HTML view of one snapshot (for ``_repr_html_`` and non-widget frontends)."""
    return render("cluster_view", **_header(snap, title, dashboard), **_sites(snap), **_workers(snap), **_jobs(snap))


def sites_rows(snap: Snapshot) -> list[list[Any]]:
    costs = _with_costs(snap)
    return [[s.name, s.kind, s.workers, s.nthreads,
             f"{format_bytes(s.memory_used)} / {format_bytes(s.memory_limit)}", s.gpus, s.processing]
            + ([_cost(s.cost_per_hour)] if costs else []) for s in snap.sites]


def workers_rows(snap: Snapshot) -> list[list[Any]]:
    return [[w.site, w.name, w.nthreads, f"{w.cpu:.0f}%",
             f"{format_bytes(w.memory_used)} / {format_bytes(w.memory_limit)}", _gpus(w) or "-",
             w.processing, _held(w) or "-"]
            for w in snap.workers]


def jobs_rows(snap: Snapshot) -> list[list[Any]]:
    return [[j.name, f"{j.done}/{j.total}", job_status(j), j.tasks, ", ".join(j.sites) or "-",
             ", ".join(j.workers) or "-", _holds(j) or "-"]
            for j in snap.jobs]


SITE_HEAD = ["site", "kind", "workers", "threads", "memory", "GPUs", "tasks", "cost"]
WORKER_HEAD = ["site", "worker", "threads", "CPU", "memory", "GPU", "tasks", "jobs"]
JOB_HEAD = ["job", "done", "status", "running", "sites", "workers", "holds"]


def _site_head(snap: Snapshot) -> list[str]:
    return SITE_HEAD if _with_costs(snap) else SITE_HEAD[:-1]


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
            self.header.value = render("cluster_unreachable", cluster=self.handle.name, error=self.error)
            return None
        data = figure_data(snap)
        with self.figure.batch_update():
            for trace, key in zip(self.figure.data, ("cpu", "memory")):
                trace.x = data["x"]
                trace.y = data[key]
        self.header.value = header_html(snap, f"Lepton cluster {self.handle.name}", self.handle.dashboard_link)
        self.tables.value = tables_html(snap)
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
        self.header.value += render("cluster_stopped", reason=reason, when=when)

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
