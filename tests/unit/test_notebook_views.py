"""The notebook's static views of a snapshot: the sidebar's look, costs only where set."""

import re

from lepton_lab.cluster.allocation import JobAllocation, SiteTotals, Snapshot, Totals, WorkerAllocation
from lepton_lab.views import snapshot_html, snapshot_text

GiB = 1024 ** 3


def worker(name, site, kind, cost=0.0, jobs=None):
    return WorkerAllocation(name=name, address=f"tcp://127.0.0.1:{len(name)}", site=site, kind=kind, nthreads=1,
                            memory_used=GiB // 4, memory_limit=GiB, cpu=95.0, gpus=[], processing=len(jobs or {}),
                            resources={}, used_resources={}, jobs=jobs or {}, cost_per_hour=cost)


def snapshot(cost=0.0, jobs=()):
    workers = [worker("cloud-0", "cloud", "cloud", cost, {j.name: 1 for j in jobs}),
               worker("edge-0", "edge", "edge")]
    sites = [SiteTotals("cloud", "cloud", 1, 1, GiB // 4, GiB, 0, len(jobs), cost),
             SiteTotals("edge", "edge", 1, 1, GiB // 4, GiB, 0, 0, 0.0)]
    return Snapshot(cluster="local-ann-1", time=0.0, scheduler="tls://127.0.0.1:8786", workers=workers,
                    sites=sites, jobs=list(jobs), totals=Totals(2, 2, GiB // 2, 2 * GiB, 0, len(jobs), cost))


def test_no_cost_is_shown_where_none_is_set():
    html, text = snapshot_html(snapshot(), title="Lepton cluster local-ann-1"), snapshot_text(snapshot())
    assert "$" not in html and "$" not in text and ">cost<" not in html


def test_a_set_cost_is_shown():
    html = snapshot_html(snapshot(cost=2.5))
    assert "$2.50/h" in html and ">cost<" in html
    assert "$0.00/h" not in html  # the edge site sets none


def test_styled_tables_with_site_chips_and_bars():
    html = snapshot_html(snapshot())
    assert "<table class='lepton-table' style='border-collapse:collapse" in html
    # each site and worker carries its kind's chip; CPU and memory are bars with their labels
    assert len(re.findall(r"<span style='background:var\(--jp-brand-color3", html)) == 2
    assert len(re.findall(r"<span style='background:var\(--jp-success-color3", html)) == 2
    assert "width:95.0%" in html and ">0.2/1.0 GiB<" in html
    # the old unstyled site table ("cloud cloud 1 1 ...") is gone
    assert "<td>cloud</td><td>cloud</td>" not in html


def test_jobs_heading_stands_apart():
    html = snapshot_html(snapshot())
    assert re.search(r">Jobs</div><div style='[^']*font-style:italic'>no job running</div>", html)
    busy = snapshot_html(snapshot(jobs=[JobAllocation("fraud-train", 1, ["cloud-0"], ["cloud"], {"threads": 1})]))
    assert ">Jobs</div><table" in busy and "fraud-train" in busy


def test_names_are_escaped():
    snap = snapshot()
    snap.workers[0].name = "<b>x</b>"
    assert "<b>x</b>" not in snapshot_html(snap) and "&lt;b&gt;x&lt;/b&gt;" in snapshot_html(snap)


def test_models_are_a_table():
    from lepton_lab.kernel.magics.model import models_table

    out = models_table([
        {"name": "fraud", "team": "finance", "latest_version": 3, "versions": 3, "framework": "xgboost",
         "updated": "2026-03-01T12:00:05+00:00", "aliases": {"production": 2, "staging": 3}},
        {"name": "scans", "team": "medical", "latest_version": 1, "versions": 1, "framework": "torch",
         "updated": "2026-02-01T08:30:00+00:00", "aliases": {}},
    ])
    lines = out["text/plain"].splitlines()
    assert lines[0].split() == ["team", "name", "versions", "aliases", "framework", "updated"]
    assert lines[1].split() == ["finance", "fraud", "3", "(latest", "v3)", "production→v2,", "staging→v3",
                                "xgboost", "2026-03-01", "12:00"]
    assert "{" not in out["text/plain"]  # no raw JSON lines
    assert out["text/html"].count("<tr>") == 3 and "<th" in out["text/html"]


def test_dashboard_panes_open_as_lab_tabs_through_the_server():
    html = snapshot_html(snapshot(), dashboard="/user/ann/lepton/dashboard/abc123/status")
    assert "href='/user/ann/lepton/dashboard/abc123/status'" in html
    assert "href='/user/ann/lepton/dashboard/abc123/individual-task-stream'" in html
    assert ("data-lepton-pane='task-stream' data-lepton-cluster='abc123' "
            "data-lepton-cluster-name='local-ann-1'>task stream</a>") in html
    # A cluster this kernel runs itself: its own dashboard, one plain link.
    direct = snapshot_html(snapshot(), dashboard="http://127.0.0.1:8787/status")
    assert "href='http://127.0.0.1:8787/status'" in direct and "data-lepton-pane" not in direct
    assert "Dask dashboard" not in snapshot_html(snapshot())


def test_durations_read_at_a_glance():
    from lepton_lab.views import duration

    assert [duration(s) for s in (0, 4.24, 59.96, 65, 3599, 3600, 7380)] == [
        "0.0 s", "4.2 s", "60.0 s", "1m 05s", "59m 59s", "1h 00m", "2h 03m"]


def test_job_rows_show_done_of_total_and_where_the_job_stands():
    from lepton_lab.views import job_status

    running = JobAllocation("fraud-train", 2, ["cloud-0"], ["cloud"], {"threads": 2}, done=118, total=120,
                            started=100.0, elapsed=12.5)
    finished = JobAllocation("score", done=120, total=120, started=100.0, finished=104.2, elapsed=4.2)
    failed = JobAllocation("agg", done=3, erred=2, total=5, started=1.0, finished=2.0, elapsed=1.0)
    stopped = JobAllocation("cell", done=1, total=4, started=1.0, finished=4.1, elapsed=3.1)
    waiting = JobAllocation("queued", total=8)
    assert [job_status(j) for j in (running, finished, failed, stopped, waiting)] == [
        "running 12.5 s", "done in 4.2 s", "done in 1.0 s, 2 erred", "stopped after 3.1 s", "waiting"]
    snap = snapshot(jobs=[running, finished, failed])
    html = snapshot_html(snap)
    assert ">118/120</span>" in html and "width:98.3%" in html  # the progress bar, its done part
    assert ">120/120</span>" in html and "done in 4.2 s" in html
    assert re.search(r"width:60\.0%[^>]*success[^<]*</div><div style='width:40\.0%[^>]*error", html)  # 2 erred
    text = snapshot_text(snap)
    assert re.search(r"fraud-train +118/120 +running 12\.5 s +2 +cloud", text)
    assert re.search(r"score +120/120 +done in 4\.2 s +0 +- ", text)


BAD = "<script>alert(1)</script>"
QUOTE = "x' onmouseover='alert(1)"  # would close a single-quoted attribute


class _Handle:
    """What the live view reads of a cluster handle; its snapshot names everything ``BAD``."""

    def __init__(self, name, snap, dashboard=""):
        self.name, self.snap, self.dashboard_link, self.closed = name, snap, dashboard, False

    def snapshot(self):
        if isinstance(self.snap, Exception):
            raise self.snap
        return self.snap


def _hostile_snapshot():
    job = JobAllocation(BAD, 1, [BAD], [BAD], {BAD: 1}, done=1, total=2, started=0.0, elapsed=1.0)
    snap = snapshot(cost=1.0, jobs=[job])
    snap.cluster, snap.scheduler = BAD, f"tls://{BAD}:8786"
    snap.sites[0].name = snap.workers[0].site = BAD
    snap.workers[0].name = BAD
    snap.workers[0].jobs = {BAD: 1}
    return snap


def test_user_names_are_escaped_in_the_widget_and_its_html():
    from lepton_lab.views import AllocationView

    view = AllocationView(_Handle(BAD, _hostile_snapshot(), f"/u/lepton/dashboard/{QUOTE}/status"), start=False)
    try:
        static, text = view._repr_html_(), "&lt;script&gt;alert(1)&lt;/script&gt;"
        for html in (view.header.value, view.tables.value, static, snapshot_html(_hostile_snapshot())):
            assert "<script" not in html and text in html
        assert static.count(text) >= 9  # title, scheduler, site, worker and its site, job, its site and holds
        assert view.tables.value.count(text) >= 4  # the site, the job, its site chip and its holds
        # an attribute is never closed by a name: the quote comes out as an entity
        assert "data-lepton-cluster='x&#39; onmouseover=&#39;alert(1)'" in view.header.value
        assert "onmouseover='" not in view.header.value
        view.freeze(f"stopped by {BAD}")
        assert "<script" not in view.header.value and f"stopped by {text} at " in view.header.value
    finally:
        view.close()


def test_an_unreachable_cluster_shows_its_error_escaped():
    from lepton_lab.views import AllocationView

    view = AllocationView(_Handle(BAD, snapshot()), start=False)
    try:
        view.handle.snap = OSError(f"no route to {BAD}")
        assert view.refresh() is None
        assert view.header.value == ("<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>: not reachable "
                                     "(OSError: no route to &lt;script&gt;alert(1)&lt;/script&gt;)")
    finally:
        view.close()


def test_tables_escape_text_and_keep_markup():
    from markupsafe import Markup

    from lepton_lab.views import _table

    html = _table(["name", BAD], [[BAD, Markup("<i>ok</i>"), None]])
    assert "<script" not in html and html.count("&lt;script&gt;") == 2
    assert ">" + "<i>ok</i>" + "</td>" in html and ">None</td>" in html


def test_bars_turn_amber_then_red():
    snap = snapshot()
    snap.workers[0].cpu, snap.workers[1].cpu = 75.0, 150.0
    html = snapshot_html(snap)
    assert "width:75.0%;height:100%;background:var(--jp-warn-color2" in html
    assert "width:100.0%;height:100%;background:var(--jp-error-color2" in html  # clamped at 100
    assert ">150%</span>" in html  # the label keeps the measured value
