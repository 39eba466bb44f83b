"""The server extension is a ``LeptonApp``: settings from config files, environment variables beneath."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_server.auth.authorizer import Authorizer

from lepton_lab import config
from lepton_lab.security.authz import LeptonAuthorizer
from lepton_lab.security.identity import LeptonIdentityProvider, local_user
from lepton_lab.server.app import LeptonApp
from lepton_lab.testing import free_port

#: The server config the wheel installs (``etc/jupyter/jupyter_server_config.d``).
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "jupyter-config" / "server-config" / "lepton_lab.json"

RESEARCH_POLICY = """
version: 1
teams: [research]
members:
  {admin}: {{research: admin}}
"""


@pytest.fixture
def configured_home(tmp_path):
    home = tmp_path / "configured-home"
    home.mkdir()
    (home / "policy.yaml").write_text(RESEARCH_POLICY.format(admin=local_user()))
    return home


@pytest.fixture
def lepton_settings(configured_home):
    """What the ``LeptonApp`` section of the server's config sets (tests parametrize it)."""
    return {"home": str(configured_home), "policy_path": str(configured_home / "policy.yaml"),
            "watch_interval": 1200.0}


@pytest.fixture
def server_classes():
    """``ServerApp`` settings replacing the test server's authorizer and identity provider classes."""
    return {}


@pytest.fixture
def jp_server_config(jp_server_config, lepton_settings, server_classes, monkeypatch):
    # The environment names other values: what the config file sets must win over it.
    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", "900")
    server = {k: v for k, v in jp_server_config["ServerApp"].items()
              if not (server_classes and k in ("authorizer_class", "identity_provider_class"))}
    return {**jp_server_config, "ServerApp": {**server, **server_classes}, "LeptonApp": dict(lepton_settings)}


class OwnAuthorizer(Authorizer):
    """A deployment's own authorizer."""


def _app(jp_serverapp) -> LeptonApp:
    app = jp_serverapp.extension_manager.extension_points["lepton_lab"].app
    assert isinstance(app, LeptonApp)
    return app


async def test_config_file_settings_are_the_ones_in_force(as_user, jp_serverapp, configured_home, lepton_home):
    code, me = await as_user("admin", "lepton", "api", "whoami")
    assert code == 200 and me["teams"] == ["research"], me
    services = jp_serverapp.web_app.settings["lepton"]
    assert services.policy_path == configured_home / "policy.yaml"
    assert services.home == configured_home
    # Process-wide: modules reading config.* see the configured values, not the environment's.
    assert config.home() == configured_home != lepton_home
    assert config.policy_path() == configured_home / "policy.yaml"
    assert config.watch_interval() == 1200.0 == _app(jp_serverapp).watch_interval
    assert services.watch.interval == 1200.0
    # Stopping the extension hands the settings back to the environment.
    await _app(jp_serverapp).stop_extension()
    assert config.home() == lepton_home and config.watch_interval() == 900.0


@pytest.mark.parametrize("lepton_settings", [{}])
async def test_with_no_config_the_environment_decides(as_user, jp_serverapp, lepton_home):
    app = _app(jp_serverapp)
    assert app.home == str(lepton_home) and app.policy_path == os.environ["LEPTON_POLICY"]
    assert app.watch_interval == 900.0 and app.gc_freeze is False and app.autostart_profile == ""
    assert app.scheduler_host == "127.0.0.1"
    code, me = await as_user("admin", "lepton", "api", "whoami")
    assert code == 200 and me["teams"] == ["medical", "finance"], me
    assert config.home() == lepton_home and config.watch_interval() == 900.0


async def test_authorizer_and_identity_provider_are_handed_the_services(jp_serverapp):
    services = jp_serverapp.web_app.settings["lepton"]
    assert isinstance(jp_serverapp.authorizer, LeptonAuthorizer)
    assert isinstance(jp_serverapp.identity_provider, LeptonIdentityProvider)
    assert jp_serverapp.authorizer.services is services
    assert jp_serverapp.identity_provider.services is services
    assert jp_serverapp.authorizer.control_plane is False
    assert jp_serverapp.identity_provider.kernel_tokens is jp_serverapp.web_app.settings["lepton_kernel_tokens"]


@pytest.mark.parametrize("server_classes", [{"authorizer_class": Authorizer}])
async def test_jupyter_defaults_give_way_to_lepton_classes_when_linked(jp_serverapp):
    assert type(jp_serverapp.authorizer) is LeptonAuthorizer
    assert type(jp_serverapp.identity_provider) is LeptonIdentityProvider
    assert jp_serverapp.authorizer.services is jp_serverapp.web_app.settings["lepton"]


@pytest.mark.parametrize("server_classes", [{"authorizer_class": OwnAuthorizer}])
async def test_a_deployment_keeps_its_own_authorizer(jp_serverapp):
    assert type(jp_serverapp.authorizer) is OwnAuthorizer
    assert type(jp_serverapp.identity_provider) is LeptonIdentityProvider
    assert not _app(jp_serverapp)._uses_lepton_auth()  # and the server's log says so


def test_the_extension_point_is_the_app():
    import lepton_lab

    assert lepton_lab._jupyter_server_extension_points() == [{"module": "lepton_lab", "app": LeptonApp}]


BAD_POLICY = "version: 1\nteams: [medical]\nmembers:\n  alice: {medical: analist}\n"


@pytest.mark.parametrize(("settings", "message"), [
    ({"policy_path": "{bad}"},
     "Lepton Lab: invalid policy, server not started: bad-policy.yaml: members.alice.medical: unknown role 'analist'"),
    ({"watch_interval": 0},
     "Lepton Lab: server not started: LeptonApp.watch_interval: seconds from 0 to 3600, got 0.0"),
    ({"scheduler_host": "not a host"},
     "Lepton Lab: server not started: LeptonApp.scheduler_host: a host name or IP, no port"),
])
def test_a_bad_setting_in_a_config_file_stops_the_server_in_one_line(tmp_path, settings, message):
    bad = tmp_path / "bad-policy.yaml"
    bad.write_text(BAD_POLICY)
    conf = tmp_path / "config"
    (conf / "jupyter_server_config.d").mkdir(parents=True)
    # The extension enabled as the wheel ships it, the setting in the server's own config file.
    (conf / "jupyter_server_config.d" / "lepton_lab.json").write_text(SHIPPED_CONFIG.read_text())
    lepton = {k: (v.format(bad=bad) if isinstance(v, str) else v) for k, v in settings.items()}
    (conf / "jupyter_server_config.json").write_text(json.dumps({"LeptonApp": lepton}))
    (tmp_path / "root").mkdir()
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(conf), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "LEPTON_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                          "--ip=127.0.0.1", f"--port={free_port()}", f"--ServerApp.root_dir={tmp_path / 'root'}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(message), out.stderr[-2000:]
