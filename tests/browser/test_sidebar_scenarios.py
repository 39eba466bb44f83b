"""End-to-end scenarios of the Lepton sidebar against the real server.

NOTE FOR THE LEAD: these tests need the server side of the REST contract
(``lepton_lab.server``: whoami, profiles, clusters + allocation + stream,
templates) and personal-token login in the browser. Until those exist they
FAIL on purpose (no skip): run them when the server lands with

    .venv/bin/python -m pytest tests/browser -q -p no:cacheprovider

What they assume, all set up in ``conftest.py``:
- the test policy (``TEST_POLICY``): ``mira`` is a medical analyst (trusted to run code), ``finn`` a
  finance analyst whose team may hold 4 workers, 0 GPUs and 1 cluster;
- tokens from ``lepton_lab.security.tokens.TokenStore`` in ``$LEPTON_HOME``, and
  opening ``/lab?token=<personal token>`` signs the browser in as that user.
  JupyterLab puts ``ServerApp.token`` in the page config and sends it as
  ``Authorization: token ...`` on every REST call, so the IdentityProvider must
  let the login cookie (or the personal token) decide who the browser is;
- the built-in ``local`` profile (a ``cloud`` and an ``edge`` site) and the team
  templates under ``templates/medical`` and ``templates/finance``;
- a cluster's ``connect_code`` runs cleanly in a kernel started by this server.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect

START_TIMEOUT = 120_000  # ms: a cluster starts real Dask processes on 2 cores


def new_cluster_through_form(lab, team: str, profile: str, **workers: int):
    """Open the form, fill it, press Create."""
    lab.testid("lepton-new-cluster").click()
    form = lab.testid("lepton-new-cluster-form")
    expect(form).to_be_visible()
    form.locator('select[name="team"]').select_option(team)
    form.locator('select[name="profile"]').select_option(profile)
    for kind, n in workers.items():
        form.locator(f'input[name="workers-{kind}"]').fill(str(n))
    form.locator('[data-testid="lepton-create-cluster"]').click()
    return form


def test_medical_analyst_full_cycle(open_lab, users, user_tokens):
    lab = open_lab(user_tokens["medical"], name="medical")
    page = lab.page
    lab.open_panel()
    lab.widen_sidebar()

    # Who am I: the medical analyst, in team medical.
    whoami = lab.testid("lepton-whoami")
    expect(whoami).to_contain_text(users["medical"], timeout=20_000, ignore_case=True)
    expect(whoami.locator('[data-testid="lepton-team"]')).to_have_text([re.compile(r"medical")])

    # Only medical templates.
    templates = lab.testid("lepton-template-item")
    expect(templates.first).to_be_visible(timeout=20_000)
    assert set(templates.evaluate_all("els => els.map(e => e.dataset.team)")) == {"medical"}
    lab.screenshot("medical-1-panel")

    # Create a cluster through the form; it appears selected in the list.
    before = set(lab.testid("lepton-cluster-item").evaluate_all("els => els.map(e => e.dataset.clusterId)"))
    form = new_cluster_through_form(lab, "medical", "local")
    expect(form).to_be_hidden(timeout=START_TIMEOUT)
    items = lab.testid("lepton-cluster-item")
    expect(items).to_have_count(len(before) + 1, timeout=30_000)
    ids = items.evaluate_all("els => els.map(e => e.dataset.clusterId)")
    (cluster_id,) = set(ids) - before
    item = page.locator(f'[data-testid="lepton-cluster-item"][data-cluster-id="{cluster_id}"]')
    expect(item).to_have_class(re.compile("lepton-mod-selected"))

    # The live view shows cloud and edge workers of that cluster.
    allocation = page.locator(f'[data-testid="lepton-allocation"][data-cluster-id="{cluster_id}"]')
    expect(allocation).to_be_visible(timeout=30_000)
    expect(allocation.locator('[data-testid="lepton-worker-row"][data-kind="cloud"]').first).to_be_visible(
        timeout=START_TIMEOUT
    )
    expect(allocation.locator('[data-testid="lepton-worker-row"][data-kind="edge"]').first).to_be_visible(
        timeout=START_TIMEOUT
    )
    lab.screenshot("medical-2-live")

    # Scale the edge site up by one: the list and the live view follow.
    edge = item.locator('[data-testid^="lepton-scale-"][data-kind="edge"]').first
    site = edge.get_attribute("data-testid").removeprefix("lepton-scale-")
    n = int(edge.get_attribute("data-workers"))
    edge.locator(".lepton-scale-up").click()
    expect(edge).to_have_attribute("data-workers", str(n + 1), timeout=START_TIMEOUT)
    expect(allocation.locator(f'[data-testid="lepton-worker-row"][data-site="{site}"]')).to_have_count(
        n + 1, timeout=START_TIMEOUT
    )
    lab.screenshot("medical-3-scaled")

    # Use in notebook: a cell with the server's connect code runs without error.
    item.locator('[data-testid="lepton-use-in-notebook"]').click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook).to_be_visible(timeout=60_000)
    cell = notebook.locator(".jp-CodeCell").last
    expect(cell.locator(".jp-InputArea-editor")).to_contain_text(cluster_id, timeout=30_000)
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=START_TIMEOUT)
    expect(cell.locator('[data-mime-type="application/vnd.jupyter.error"]')).to_have_count(0)
    expect(cell.locator('[data-mime-type="application/vnd.jupyter.stderr"]')).to_have_count(0)
    lab.screenshot("medical-4-notebook")

    # Shut the cluster down, with confirmation.
    item.locator('[data-testid="lepton-shutdown"]').click()
    page.locator(".jp-Dialog button.jp-mod-warn").click()
    expect(item).to_have_count(0, timeout=60_000)
    lab.screenshot("medical-5-shut-down")


def test_finance_analyst_sees_no_medical_cluster_and_hits_quota(open_lab, lab_server, users, user_tokens):
    # A medical cluster exists, started through the REST API as the medical analyst.
    status, medical = lab_server.api(
        "lepton", "api", "clusters", token=user_tokens["medical"], method="POST",
        body={"team": "medical", "profile": "local"},
    )
    assert status == 201, (status, medical)
    try:
        lab = open_lab(user_tokens["finance"], name="finance")
        page = lab.page
        lab.open_panel()
        lab.widen_sidebar()
        expect(lab.testid("lepton-whoami")).to_contain_text(users["finance"], timeout=20_000, ignore_case=True)

        # The medical cluster is not listed, and nothing of another team is.
        expect(lab.testid("lepton-clusters")).to_be_visible()
        expect(page.locator(f'[data-testid="lepton-cluster-item"][data-cluster-id="{medical["id"]}"]')).to_have_count(0)
        assert "medical" not in lab.testid("lepton-clusters").inner_text().lower()
        templates = lab.testid("lepton-template-item")
        assert set(templates.evaluate_all("els => els.map(e => e.dataset.team)")) <= {"finance"}

        # Over quota (finance may hold 4 workers): the server's quota message is shown.
        form = new_cluster_through_form(lab, "finance", "local", cloud=6)
        expect(form.locator('[data-testid="lepton-quota-warning"]').first).to_be_visible()
        error = form.locator('[data-testid="lepton-form-error"]')
        expect(error).to_contain_text("quota", timeout=30_000, ignore_case=True)
        expect(error).to_have_count(1)  # shown once: at the field, not as a toast as well
        expect(lab.toasts("error")).to_have_count(0)
        expect(lab.testid("lepton-cluster-item")).to_have_count(0)
        lab.screenshot("finance-quota")
    finally:
        lab_server.api("lepton", "api", "clusters", medical["id"], token=user_tokens["medical"], method="DELETE")
