"""The sidebar after a restart, forms that send what was typed, and the notebook's cluster view.

All on a lab started where a previous one left two clusters marked running
(``restarted_lab_server``), signed in as the admin; screenshots go to
``tests/artifacts/browser/``.
"""

from __future__ import annotations

import json
import re

import nbformat
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

START_TIMEOUT = 120_000  # ms: a cluster starts real Dask processes on 2 cores


def running_clusters(server) -> list[dict]:
    status, listing = server.api("lepton", "api", "clusters")
    assert status == 200, listing
    return [c for c in listing["clusters"] if c["status"] != "stopped"]


def test_stopped_clusters_after_a_restart(open_lab, restarted_lab_server):
    lab = open_lab(name="restarted", server=restarted_lab_server)
    lab.open_panel()
    lab.widen_sidebar()
    stopped = lab.testid("lepton-stopped")
    expect(stopped.locator("summary")).to_contain_text("Stopped (2)", timeout=20_000)
    # Collapsed, below an empty running list; no dashboard anywhere.
    expect(lab.testid("lepton-no-clusters")).to_contain_text("No running cluster")
    expect(stopped.locator('[data-testid="lepton-cluster-item"]').first).to_be_hidden()
    expect(lab.testid("lepton-open-dashboard")).to_have_count(0)
    # Nothing stopped is followed live.
    expect(lab.page.locator('[data-testid="lepton-allocation"][data-cluster-id]')).to_have_count(0)
    lab.screenshot("restarted-1-stopped-collapsed")

    stopped.locator(".lepton-Stopped-title").click()
    items = stopped.locator('[data-testid="lepton-cluster-item"]')
    expect(items).to_have_count(2)
    expect(items.first).to_be_visible()
    reasons = stopped.locator('[data-testid="lepton-stopped-reason"]')
    expect(reasons).to_have_text([re.compile(r"^stopped .+ ago: the Jupyter server stopped$")] * 2)
    expect(stopped.locator('[data-testid="lepton-remove"]')).to_have_text(["Remove", "Remove"])
    expect(stopped).not_to_contain_text("Shut down")
    lab.screenshot("restarted-2-stopped-open")

    # "local" was recorded without its settings: one line says so, and it stays
    stopped.locator('[data-cluster-id="0a1b2c3d4e5f"] [data-testid="lepton-start-again"]').click()
    expect(lab.toasts("error")).to_have_count(1, timeout=20_000)
    expect(lab.toasts("error")).to_contain_text("cluster local was recorded without its settings; start a new one")
    expect(items).to_have_count(2)
    # "ward" starts again with its settings: running, listed once
    stopped.locator('[data-cluster-id="5f4e3d2c1b0a"] [data-testid="lepton-start-again"]').click()
    running = lab.testid("lepton-cluster-list").locator('[data-testid="lepton-cluster-item"]')
    expect(running).to_have_count(1, timeout=START_TIMEOUT)
    expect(running.first).to_contain_text("ward")
    expect(lab.page.locator(".Toastify__toast").filter(has_text="Started ward again")).to_have_count(1)
    expect(items).to_have_count(1)
    expect(stopped.locator("summary")).to_contain_text("Stopped (1)")
    lab.screenshot("restarted-3-started-again")
    [ward] = running_clusters(restarted_lab_server)
    assert ward["name"] == "ward" and {s["name"]: s["workers"] for s in ward["sites"]} == {"cloud": 1, "edge": 0}
    status, _ = restarted_lab_server.api("lepton", "api", "clusters", ward["id"], method="DELETE")
    assert status == 204

    lab.testid("lepton-clear-stopped").click()
    expect(stopped).to_have_count(0, timeout=20_000)
    status, listing = restarted_lab_server.api("lepton", "api", "clusters")
    assert (status, listing) == (200, {"clusters": []})
    expect(lab.toasts("error")).to_have_count(1)


def refused_at(form, field: str, words: str):
    """The one refusal shown, under ``field``'s input."""
    error = form.locator('[data-testid="lepton-form-error"]')
    expect(error).to_have_count(1, timeout=30_000)
    expect(error).to_contain_text(words)
    label = form.locator(f'label:has(input[name="{field}"])')
    # The error sits right after the field it is about.
    assert label.evaluate("el => el.nextElementSibling?.dataset.testid") == "lepton-form-error"


def test_forms_send_what_was_typed(open_lab, restarted_lab_server):
    server = restarted_lab_server
    lab = open_lab(name="forms", server=server)
    page = lab.page
    lab.open_panel()
    lab.widen_sidebar()
    lab.testid("lepton-new-cluster").click()
    form = lab.testid("lepton-new-cluster-form")
    form.locator('select[name="profile"]').select_option("local")
    cloud = form.locator('input[name="workers-cloud"]')
    # Empty fields say the profile decides.
    expect(cloud).to_have_value("")
    expect(cloud).to_have_attribute("placeholder", re.compile(r"\(profile default\)"))
    expect(form.locator('input[name="gpus"]')).to_have_attribute("placeholder", re.compile(r"profile default"))

    create = form.locator('[data-testid="lepton-create-cluster"]')
    for typed, words in (("-1", "workers.cloud: must be a whole number from 0 to 256, got -1"),
                         ("2.5", "workers.cloud: must be a whole number from 0 to 256, got 2.5"),
                         ("20", "may hold 12 workers")):
        cloud.fill(typed)
        create.click()
        refused_at(form, "workers-cloud", words)
        expect(cloud).to_have_value(typed)  # never changed
        expect(lab.toasts("error")).to_have_count(0)  # shown once: at the field
        lab.screenshot(f"forms-1-refused-{typed.replace('.', '_').replace('-', 'minus')}")
    assert running_clusters(server) == []

    # Cleared: the profile's default is sent (nothing), and the cluster gets a readable name.
    cloud.fill("")
    create.click()
    expect(form).to_be_hidden(timeout=START_TIMEOUT)
    [cluster] = running_clusters(server)
    try:
        assert cluster["name"] == "local-root-1"
        assert {s["name"]: s["workers"] for s in cluster["sites"]} == {"cloud": 2, "edge": 2}
        item = page.locator(f'[data-testid="lepton-cluster-item"][data-cluster-id="{cluster["id"]}"]')
        expect(item).to_contain_text("local-root-1", timeout=30_000)
        expect(item).not_to_contain_text("$")  # the profile sets no cost
        lab.screenshot("forms-2-created")

        # "Scale Lepton Cluster…": -1 is outside the served bounds: the dialog says why, in the server's
        # words, as it is typed, and OK cannot send it.
        page.keyboard.press("Control+Shift+C")
        palette = page.locator(".lm-CommandPalette-input")
        palette.fill("Scale Lepton Cluster")
        page.locator(".lm-CommandPalette-item", has_text="Scale Lepton Cluster").first.click()
        dialog = page.locator(".jp-Dialog")
        dialog.locator("select").select_option("edge")
        dialog.locator(".jp-mod-accept").click()
        number = page.locator(".jp-Dialog input[type=number]")
        expect(number).to_have_value("2")
        number.fill("-1")
        expect(page.locator(".jp-Dialog")).to_contain_text("workers: must be a whole number from 0 to 256, got -1",
                                                            timeout=30_000)
        expect(page.locator(".jp-Dialog .jp-mod-accept")).to_be_disabled()
        expect(page.locator(".jp-Dialog input[type=number]")).to_have_value("-1")
        expect(lab.toasts("error")).to_have_count(0)
        lab.screenshot("forms-3-scale-refused")
        page.locator(".jp-Dialog .jp-mod-reject").click()
        edge = item.locator('[data-testid^="lepton-scale-"][data-kind="edge"]').first
        expect(edge).to_have_attribute("data-workers", "2")
    finally:
        server.api("lepton", "api", "clusters", cluster["id"], method="DELETE")


def test_the_notebook_cluster_view(open_lab, restarted_lab_server):
    server = restarted_lab_server
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%load_ext lepton_lab"),
                nbformat.v4.new_code_cell("%lepton up --name nb-view --cloud 1 --edge 1 --no-view"),
                nbformat.v4.new_code_cell("%lepton status --static")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (server.root_dir / "view.ipynb").write_text(json.dumps(nb))
    lab = open_lab(name="notebook", server=server)
    page = lab.page
    page.goto(f"{server.url}/lab/tree/view.ipynb?reset&token={server.token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=60_000)
    # JupyterLab may ask which kernel to use for a notebook it has not opened before.
    try:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=10_000)
    except PlaywrightTimeout:
        pass
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=60_000)
    try:
        page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
        page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
        view = page.locator(".lepton-allocation")
        expect(view).to_be_visible(timeout=START_TIMEOUT)
        expect(view).to_contain_text("Lepton cluster nb-view")
        expect(view).to_contain_text("no job running")
        expect(view).not_to_contain_text("$")
        expect(view.locator("table.lepton-table")).to_have_count(2)
        view.scroll_into_view_if_needed()
        lab.screenshot("notebook-1-static-view")
    finally:
        for c in running_clusters(server):
            server.api("lepton", "api", "clusters", c["id"], method="DELETE")
