"""Browser tests: a real ``jupyter lab`` server and Debian's Chromium driven by Playwright.

Run them apart from the other suites (Playwright's sync API and pytest-jupyter's
event loop do not mix)::

    .venv/bin/python -m pytest tests/browser -q -p no:cacheprovider

The lab is :func:`lepton_lab.testing.start_jupyter`'s: 127.0.0.1 and a free port,
a private root dir, workspaces dir, settings dir, ``LEPTON_HOME`` and the test
policy below, and the Lepton server extension enabled as the wheel does it.
Screenshots, console logs and the server log go to ``tests/artifacts/browser/``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from lepton_lab.testing import CHROMIUM, CHROMIUM_ARGS, JupyterProcess, start_jupyter

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"

#: The id of the Lepton panel, hence of its tab in the left sidebar.
PANEL_ID = "lepton-lab-panel"

#: Users of the test policy by role: a medical analyst, a finance analyst with a small quota, an admin.
USERS = {"medical": "mira", "finance": "finn", "admin": "root"}
MEDICAL_USER, FINANCE_USER, ADMIN_USER = USERS["medical"], USERS["finance"], USERS["admin"]

TEST_POLICY = f"""\
version: 1
teams: [medical, finance]
members:
  {MEDICAL_USER}: {{medical: analyst}}
  {FINANCE_USER}: {{finance: analyst}}
  {ADMIN_USER}: {{"*": admin}}
quotas:
  teams:
    medical: {{max_gpus: 2, max_workers: 12, max_clusters: 3}}
    finance: {{max_gpus: 0, max_workers: 4, max_clusters: 1}}
  default_user: {{max_gpus: 1, max_workers: 12, max_clusters: 2}}
terminals: [admin]
# The medical analyst runs notebooks on this one shared server (no JupyterHub here).
trusted: [{MEDICAL_USER}]
"""

@pytest.fixture(scope="session")
def lab_server() -> JupyterProcess:
    """One ``jupyter lab`` for the whole browser session, stopped at the end."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lepton-browser-"))
    server = start_jupyter(tmp, TEST_POLICY, log=ARTIFACTS / "jupyter-lab.log")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


#: Clusters that ran, by the records a Jupyter server that went away left in its LEPTON_HOME.
LEFT_RUNNING = {
    cid: {"id": cid, "name": name, "owner": ADMIN_USER, "team": "medical", "profile": "local",
          "created": "2026-01-02T03:04:05+00:00", "status": "running",
          "scheduler_address": "tls://127.0.0.1:45678", "dashboard_link": "http://127.0.0.1:45679/status",
          "cost_per_hour": 0.0, "tls": True, "ca_dir": "",
          "sites": [{"name": "cloud", "kind": "cloud", "workers": 2, "gpus": 0, "threads": 1,
                     "memory": "1 GiB", "cost_per_hour": 0.0},
                    {"name": "edge", "kind": "edge", "workers": 2, "gpus": 0, "threads": 1,
                     "memory": "1 GiB", "cost_per_hour": 0.0}]}
    for cid, name in (("0a1b2c3d4e5f", "local"), ("5f4e3d2c1b0a", "ward"))
}
# "ward" was recorded with the settings it started with; "local" (an older record) was not.
LEFT_RUNNING["5f4e3d2c1b0a"]["profile_spec"] = {
    "name": "local", "sites": [{"name": "cloud", "kind": "cloud", "workers": 1, "threads": 1, "memory": "1GiB"},
                               {"name": "edge", "kind": "edge", "workers": 0, "threads": 1, "memory": "1GiB"}]}


@pytest.fixture(scope="module")
def restarted_lab_server() -> JupyterProcess:
    """A ``jupyter lab`` started where a previous one left two clusters marked running."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lepton-browser-restarted-"))
    (tmp / "home").mkdir()
    (tmp / "home" / "clusters.json").write_text(json.dumps(LEFT_RUNNING))
    server = start_jupyter(tmp, TEST_POLICY, log=ARTIFACTS / "jupyter-lab-restarted.log")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def users() -> dict[str, str]:
    """The test policy's user names by role: ``medical``, ``finance``, ``admin``."""
    return dict(USERS)


@pytest.fixture(scope="session")
def user_tokens(lab_server: JupyterProcess) -> dict[str, str]:
    """Personal access tokens by role (as ``users``), stored in the server's LEPTON_HOME."""
    from lepton_lab.security.tokens import TokenStore

    store = TokenStore(lab_server.home / "tokens.json")
    return {role: store.add(name) for role, name in USERS.items()}


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (never a Playwright-downloaded one)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Lab:
    """One browser context logged in with a token, and helpers for the Lepton panel."""

    def __init__(self, browser, server: JupyterProcess, token: str, name: str):
        self.server = server
        self.name = name
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.token = token

    def open(self, timeout: float = 60_000) -> "Lab":
        """Open ``/lab?reset`` as this token and wait for the shell and the end of the splash."""
        self.page.goto(f"{self.server.url}/lab?reset&token={self.token}", timeout=timeout)
        self.page.wait_for_selector(".jp-LabShell", timeout=timeout)
        self.page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=timeout)
        return self

    @property
    def sidebar_tab(self):
        return self.page.locator(f'.jp-SideBar.jp-mod-left li[data-id="{PANEL_ID}"]')

    @property
    def panel(self):
        return self.page.locator('[data-testid="lepton-panel"]')

    def open_panel(self):
        """Click the Lepton icon in the left sidebar (unless the panel is already shown)."""
        self.sidebar_tab.wait_for(timeout=30_000)
        if not self.panel.is_visible():
            self.sidebar_tab.click()
        self.panel.wait_for(state="visible", timeout=15_000)
        return self.panel

    def widen_sidebar(self, width: int = 520):
        """Drag the left sidebar's edge so the panel is ``width`` px wide (nicer screenshots)."""
        handle = self.page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
        box = handle.bounding_box()
        if box:
            y = box["y"] + box["height"] / 2
            self.page.mouse.move(box["x"] + box["width"] / 2, y)
            self.page.mouse.down()
            self.page.mouse.move(width, y, steps=5)
            self.page.mouse.up()

    def testid(self, testid: str):
        return self.page.locator(f'[data-testid="{testid}"]')

    def toasts(self, kind: str = "error"):
        return self.page.locator(f".Toastify__toast--{kind}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self):
        (ARTIFACTS / f"{self.name}-console.log").write_text("\n".join(self.console))
        self.context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can see whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def open_lab(request, browser):
    """``open_lab(token=None, name=..., server=None)`` → a ``Lab`` with JupyterLab loaded (on the
    session's ``lab_server`` unless ``server`` is given); closed after the test, with a
    ``<name>-failed.png`` screenshot when the test failed."""
    opened: list[Lab] = []

    def _open(token: str | None = None, name: str = "lab", server: JupyterProcess | None = None) -> Lab:
        server = server or request.getfixturevalue("lab_server")
        lab = Lab(browser, server, token or server.token, name)
        opened.append(lab)
        return lab.open()

    yield _open
    report = getattr(request.node, "report_call", None)
    for lab in opened:
        if report is not None and report.failed:
            try:
                lab.screenshot(f"{lab.name}-failed")
            except Exception:  # a crashed page must not hide the test's own error
                pass
        lab.close()
