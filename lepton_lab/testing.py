"""A real Jupyter server with Lepton Lab in a private sandbox, for tests and benchmarks.

``start_jupyter(tmp, policy)`` starts ``jupyter lab`` (or ``jupyter server``) as a
subprocess on 127.0.0.1 and a free port, with its own root dir, ``LEPTON_HOME``,
policy, settings, workspaces and runtime dirs under ``tmp``, and the Lepton server
extension, identity provider and authorizer enabled through ``JUPYTER_CONFIG_PATH``
exactly as the wheel's ``jupyter-config/server-config/lepton_lab.json`` does.

Browser tests drive Debian's Chromium (:data:`CHROMIUM`, :data:`CHROMIUM_ARGS`),
never a browser downloaded by Playwright.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where ``apt-get install chromium`` puts the browser.
CHROMIUM = os.environ.get("LEPTON_CHROMIUM", "/usr/bin/chromium")
#: Flags for a headless Chromium in a container with no network beyond loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Settings overrides: no "official Jupyter news" toast over the page.
SETTINGS_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}

_SERVER_CONFIG = "jupyter-config/server-config/lepton_lab.json"
_FALLBACK_CONFIG = {"ServerApp": {"jpserver_extensions": {"lepton_lab": True}}}
#: Takes precedence over an installed ``lepton_lab.json``: Jupyter's own classes, no extension.
_WITHOUT_LEPTON = {"ServerApp": {"jpserver_extensions": {"lepton_lab": False},
                                 "authorizer_class": "jupyter_server.auth.authorizer.AllowAllAuthorizer",
                                 "identity_provider_class": "jupyter_server.auth.identity.PasswordIdentityProvider"}}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _server_config() -> str:
    """The server config the wheel installs (from a source checkout or the installed data)."""
    for path in (Path(__file__).resolve().parents[1] / _SERVER_CONFIG,
                 Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "lepton_lab.json"):
        if path.is_file():
            return path.read_text()
    return json.dumps(_FALLBACK_CONFIG)


@dataclass
class JupyterProcess:
    """A running ``jupyter lab`` / ``jupyter server``: where it listens, its token and files."""

    url: str
    token: str
    home: Path
    root_dir: Path
    policy: Path
    log: Path
    #: The server's private Jupyter config dir (first in ``JUPYTER_CONFIG_PATH``).
    config_dir: Path
    process: subprocess.Popen = field(repr=False)

    def api(self, *parts: str, token: str | None = None, method: str = "GET",
            body: dict | None = None, timeout: float = 30) -> tuple[int, Any]:
        """Call ``/<parts>`` (e.g. ``"lepton/api", "clusters"``): (status, JSON, text or None)."""
        request = urllib.request.Request(
            f"{self.url}/{'/'.join(p.strip('/') for p in parts)}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"token {token or self.token}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text, status = response.read().decode(), response.status
        except urllib.error.HTTPError as e:
            text, status = e.read().decode(), e.code
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def processes(self) -> list:
        """The server process and everything it started (psutil processes)."""
        import psutil

        try:
            p = psutil.Process(self.process.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """Terminate the server, then anything it left behind (only its own children)."""
        import psutil

        children = self.processes()[1:]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter exited with {self.process.returncode}; see {self.log}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}",
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"jupyter did not answer /api/status in {timeout:.0f} s; see {self.log}")


def start_jupyter(tmp: Path, policy: str, *, app: str = "jupyterlab", log: Path | None = None,
                  env: dict[str, str] | None = None, timeout: float = 90.0, lepton: bool = True) -> JupyterProcess:
    """Start ``app`` (``"jupyterlab"`` or ``"jupyter_server"``) sandboxed under ``tmp`` with
    the YAML ``policy`` and wait until it answers; the caller calls ``stop()``.

    No cluster is started on its own (``LEPTON_AUTOSTART`` is empty); ``env`` adds to
    or overrides the server's environment. ``lepton=False`` starts the same server
    without Lepton at all (no extension, Jupyter's own identity provider and
    authorizer): the baseline benchmarks compare against.
    """
    tmp = Path(tmp)
    home, root_dir, config, runtime = tmp / "home", tmp / "root", tmp / "config", tmp / "runtime"
    for d in (home, root_dir, config / "jupyter_server_config.d", runtime):
        d.mkdir(parents=True, exist_ok=True)
    policy_path = tmp / "policy.yaml"
    policy_path.write_text(policy)
    (config / "jupyter_server_config.d" / "lepton_lab.json").write_text(
        _server_config() if lepton else json.dumps(_WITHOUT_LEPTON))
    token = secrets.token_hex(24)
    port = free_port()
    full_env = dict(os.environ)
    full_env.update(
        LEPTON_HOME=str(home),
        LEPTON_POLICY=str(policy_path),
        LEPTON_AUTOSTART="",
        JUPYTER_CONFIG_PATH=str(config),
        JUPYTER_RUNTIME_DIR=str(runtime),
        # Kernels resolve `python` through PATH: use this environment's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    full_env.update(env or {})
    cmd = [sys.executable, "-m", app, "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root_dir}"]
    if app == "jupyterlab":
        workspaces, settings = tmp / "workspaces", tmp / "settings"
        for d in (workspaces, settings):
            d.mkdir(parents=True, exist_ok=True)
        (settings / "overrides.json").write_text(json.dumps(SETTINGS_OVERRIDES))
        cmd += [f"--LabApp.workspaces_dir={workspaces}", f"--LabApp.app_settings_dir={settings}"]
    log = log or tmp / f"{app}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, cwd=root_dir, env=full_env, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = JupyterProcess(url=f"http://127.0.0.1:{port}", token=token, home=home,
                            root_dir=root_dir, policy=policy_path, log=log, process=process,
                            config_dir=config)
    server._wait_ready(timeout)
    return server


__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "JupyterProcess", "free_port", "start_jupyter"]
