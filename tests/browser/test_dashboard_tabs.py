"""A cluster's Dask dashboard panes as JupyterLab tabs, through the Jupyter server's proxy."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from playwright.sync_api import expect

START_TIMEOUT = 120_000  # ms: a cluster starts real Dask processes on 2 cores


def status_of(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


#: Rectangles in the task stream's data source, once bokeh's document has them.
TASKS_DRAWN = """() => {
  const doc = window.Bokeh && window.Bokeh.documents[0];
  if (!doc) return false;
  for (const m of doc.all_models) {
    const data = m.data;
    if (data && data.duration !== undefined && data.duration.length >= 60) return true;
  }
  return false;
}"""


def client_of(server, cluster_id: str, token: str):
    """A Dask client with the user's own certificate for the cluster (as "Use in notebook" gets)."""
    from distributed import Client

    from lepton_lab.security.certs import IssuedCert

    status, cred = server.api("lepton", "api", "clusters", cluster_id, "credentials", token=token)
    assert status == 200, cred
    security = IssuedCert.from_dict({k: cred[k] for k in ("cert_pem", "key_pem", "ca_pem", "role",
                                                           "common_name", "expires")}).security()
    return Client(cred["scheduler_address"], security=security, timeout=60)


def test_task_stream_pane_opens_as_a_tab(open_lab, lab_server, user_tokens):
    token = user_tokens["medical"]
    status, c = lab_server.api("lepton", "api", "clusters", token=token, method="POST",
                               body={"team": "medical", "profile": "local", "name": "panes",
                                     "workers": {"cloud": 1, "edge": 0}}, timeout=120)
    assert status == 201, c
    try:
        # The link names the proxied route, not the loopback port.
        assert c["dashboard_link"] == f"/lepton/dashboard/{c['id']}/status"
        pane = f"{lab_server.url}/lepton/dashboard/{c['id']}/individual-task-stream"
        assert status_of(pane, None) in (401, 403)
        assert status_of(pane, user_tokens["finance"]) == 404

        lab = open_lab(token=token, name="dashboard-tabs")
        lab.open_panel()
        lab.widen_sidebar()
        card = lab.page.locator(f'[data-testid="lepton-cluster-item"][data-cluster-id="{c["id"]}"]')
        card.locator('[data-testid="lepton-open-dashboard"]').click()
        menu = lab.testid("lepton-dashboard-menu")
        expect(menu).to_be_visible(timeout=10_000)
        labels = menu.locator(".lm-Menu-itemLabel")
        expect(labels.first).to_have_text("Task Stream")
        expect(menu).to_contain_text("Worker Memory")
        expect(menu).not_to_contain_text("GPU")  # no GPU here
        lab.screenshot("dashboard-1-menu")
        labels.first.click()

        tab = lab.page.locator('[data-testid="lepton-dashboard-tab"][data-pane="task-stream"]')
        expect(tab).to_be_visible(timeout=10_000)
        expect(lab.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(
            "Task Stream · panes")
        frame = tab.locator("iframe")
        assert frame.get_attribute("src") == f"/lepton/dashboard/{c['id']}/individual-task-stream"
        assert set((frame.get_attribute("sandbox") or "").split()) == {"allow-scripts", "allow-same-origin"}
        # bokeh draws the task stream on a canvas once its WebSocket (through the proxy) delivered the document.
        expect(tab.frame_locator("iframe").locator("canvas").first).to_be_visible(timeout=30_000)
        # A job runs: its tasks arrive as rectangles in the task stream's data (live, through the WebSocket).
        with client_of(lab_server, c["id"], token) as client:
            # time.sleep: a function every worker has, pickled by reference.
            futures = client.map(time.sleep, [0.05] * 60, pure=False)
            client.gather(futures)
            owner = tab.locator("iframe").element_handle().content_frame()
            owner.wait_for_function(TASKS_DRAWN, timeout=30_000)
        lab.screenshot("dashboard-2-task-stream-tab")

        # A notebook's cluster view links panes the same way (lepton_lab.views.dashboard_links).
        from lepton_lab.views import dashboard_links

        links = dashboard_links(c["dashboard_link"], c["name"])
        lab.page.evaluate("html => { const d = document.createElement('div'); d.id = 'view-links';"
                          " d.style = 'position:fixed;left:40%;bottom:40px;z-index:100000;background:white';"
                          " d.innerHTML = html; document.body.appendChild(d); }", links)
        lab.page.locator("#view-links a", has_text="progress").click()
        progress = lab.page.locator('[data-testid="lepton-dashboard-tab"][data-pane="progress"]')
        expect(progress).to_be_visible(timeout=10_000)
        expect(progress.frame_locator("iframe").locator("canvas").first).to_be_visible(timeout=30_000)
        assert len(lab.context.pages) == 1  # a tab in the lab, not a browser tab
        assert not [m for m in lab.console if "pageerror" in m]
    finally:
        lab_server.api("lepton", "api", "clusters", c["id"], token=token, method="DELETE", timeout=60)
