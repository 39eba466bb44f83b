"""A real Jupyter server with the Lepton extension, a test policy and personal tokens."""

from __future__ import annotations

import json

import nbformat
import pytest

from lepton_lab.security.authz import LeptonAuthorizer
from lepton_lab.security.identity import LeptonIdentityProvider, local_user
from lepton_lab.security.tokens import TokenStore

pytest_plugins = ("pytest_jupyter.jupyter_server",)

POLICY = """
version: 1
teams: [medical, finance]
roles:
  auditor: [audit:read, clusters:read]
members:
  {admin}: {{"*": admin}}
  alice: {{medical: analyst}}
  bob: {{finance: analyst}}
  vera: {{medical: viewer, finance: viewer}}
  fiona: {{finance: analyst}}
  olga: {{finance: auditor}}
groups:
  hub-medical: {{medical: analyst}}
quotas:
  users:
    bob: {{max_workers: 3, max_gpus: 0}}
  default_user: {{max_workers: 8, max_clusters: 2}}
terminals: [admin]
trusted: [alice, fiona]
"""


def _notebook(title: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat it teaches."),
                nbformat.v4.new_code_cell("x = 1")]
    return nbformat.writes(nb)


@pytest.fixture
def lepton_home(tmp_path, monkeypatch, jp_root_dir):
    home = tmp_path / "lepton-home"
    home.mkdir()
    monkeypatch.setenv("LEPTON_HOME", str(home))
    policy = home / "policy.yaml"
    policy.write_text(POLICY.format(admin=local_user()))
    monkeypatch.setenv("LEPTON_POLICY", str(policy))
    for var in ("LEPTON_AUDIT", "LEPTON_REGISTRY", "LEPTON_AUTOSTART"):
        monkeypatch.delenv(var, raising=False)
    # Many servers come and go in this one process: freezing each one's objects would keep
    # them all alive. A real server freezes (test_gc_freeze.py).
    monkeypatch.setenv("LEPTON_GC_FREEZE", "0")
    templates = jp_root_dir / "templates"
    for team, name in (("medical", "federated-diagnosis"), ("finance", "fraud-detection")):
        (templates / team).mkdir(parents=True)
        (templates / team / f"{name}.ipynb").write_text(_notebook(name.replace("-", " ").title()))
    monkeypatch.setenv("LEPTON_TEMPLATES", str(templates))
    return home


@pytest.fixture
def tokens(lepton_home):
    store = TokenStore(lepton_home / "tokens.json")
    return {user: store.add(user) for user in ("alice", "bob", "vera", "fiona", "olga")}


@pytest.fixture
def jp_server_config(lepton_home, tokens):
    return {
        "ServerApp": {
            "jpserver_extensions": {"lepton_lab": True},
            "authorizer_class": LeptonAuthorizer,
            "identity_provider_class": LeptonIdentityProvider,
            "allow_unauthenticated_access": False,
        }
    }


@pytest.fixture
def as_user(jp_fetch, tokens):
    """``await as_user("alice", "lepton", "api", "whoami", method=..., body=...)`` -> (status, json)."""

    async def call(who, *parts, method="GET", body=None, params=None):
        headers = {}
        if who == "none":
            headers["Authorization"] = ""
        elif who != "admin":
            headers["Authorization"] = f"token {tokens[who]}"
        # Starting a cluster starts its scheduler and workers as processes: more than tornado's 20 s on a busy machine.
        kwargs = {"method": method, "headers": headers, "params": params, "raise_error": False,
                  "request_timeout": 120}
        if body is not None:
            kwargs["body"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
        elif method in ("POST", "PATCH", "PUT"):
            kwargs["body"] = "{}"
        r = await jp_fetch(*parts, **kwargs)
        try:
            data = json.loads(r.body) if r.body else None
        except ValueError:
            data = r.body
        return r.code, data

    return call


@pytest.fixture(autouse=True)
def stop_server_clusters(jp_serverapp):
    """Clusters belong to the server; when the test's server goes, so do they."""
    yield
    services = jp_serverapp.web_app.settings.get("lepton")
    if services is not None:
        services.close()
