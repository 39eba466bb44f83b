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
    from lepton_lab.kernel.model_magics import models_table

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
