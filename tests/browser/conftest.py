"""Browser tests: a real ``jupyter lab`` server and Debian's Chromium driven by Playwright.

Run them apart from the other suites (Playwright's sync API and pytest-jupyter's
event loop do not mix)::

    .venv/bin/python -m pytest tests/browser -q -p no:cacheprovider

The lab runs on 127.0.0.1 and a free port, with a private root dir, workspaces
dir, settings dir, ``LEPTON_HOME`` and test policy, and the Lepton server
extension enabled through ``JUPYTER_CONFIG_PATH`` (as the wheel's shared data
does, from ``jupyter-config/server-config/lepton_lab.json``). Screenshots, console
logs and the server log go to ``tests/artifacts/browser/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
CHROMIUM = os.environ.get("LEPTON_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
"""

#: Settings overrides: no "official Jupyter news" toast over the page.
SETTINGS_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running ``jupyter lab``: where it listens and with which token."""

    url: str
    token: str
    home: Path
    root_dir: Path
    policy: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    def api(self, *parts: str, token: str | None = None, method: str = "GET", body: dict | None = None):
        """Call the server's REST API (``/lepton/api/...`` or ``/api/...``) and return (status, JSON or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/{'/'.join(parts)}",
            data=data,
            method=method,
            headers={"Authorization": f"token {token or self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as e:
            text, status = e.read().decode(), e.code
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, None


def _wait_ready(url: str, token: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"jupyter lab did not answer /api/status in {timeout:.0f}s; see {log}")


@pytest.fixture(scope="session")
def lab_server() -> LabServer:
    """One ``jupyter lab`` for the whole browser session, stopped at the end."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lepton-browser-"))
    home, root_dir, workspaces, settings, config = (
        tmp / "home",
        tmp / "root",
        tmp / "workspaces",
        tmp / "settings",
        tmp / "config",
    )
    for d in (home, root_dir, workspaces, settings, config / "jupyter_server_config.d"):
        d.mkdir(parents=True)
    policy = tmp / "policy.yaml"
    policy.write_text(TEST_POLICY)
    (settings / "overrides.json").write_text(json.dumps(SETTINGS_OVERRIDES))
    # The same server config the wheel installs (extension, identity provider, authorizer).
    server_config = ROOT / "jupyter-config" / "server-config" / "lepton_lab.json"
    (config / "jupyter_server_config.d" / "lepton_lab.json").write_text(
        server_config.read_text()
        if server_config.exists()
        else json.dumps({"ServerApp": {"jpserver_extensions": {"lepton_lab": True}}})
    )

    token = secrets.token_hex(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        LEPTON_HOME=str(home),
        LEPTON_POLICY=str(policy),
        JUPYTER_CONFIG_PATH=os.pathsep.join(filter(None, [str(config), env.get("JUPYTER_CONFIG_PATH")])),
        # Kernels resolve `python` through PATH: use this environment's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.workspaces_dir={workspaces}",
        f"--LabApp.app_settings_dir={settings}",
    ]
    log = ARTIFACTS / "jupyter-lab.log"
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LabServer(url=url, token=token, home=home, root_dir=root_dir, policy=policy, log=log, process=process)
    try:
        _wait_ready(url, token, process, log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def users() -> dict[str, str]:
    """The test policy's user names by role: ``medical``, ``finance``, ``admin``."""
    return dict(USERS)


@pytest.fixture(scope="session")
def user_tokens(lab_server: LabServer) -> dict[str, str]:
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

    def __init__(self, browser, server: LabServer, token: str, name: str):
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
def open_lab(request, browser, lab_server):
    """``open_lab(token=None, name=...)`` → a ``Lab`` with JupyterLab loaded; closed after the test,
    with a ``<name>-failed.png`` screenshot when the test failed."""
    opened: list[Lab] = []

    def _open(token: str | None = None, name: str = "lab") -> Lab:
        lab = Lab(browser, lab_server, token or lab_server.token, name)
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
