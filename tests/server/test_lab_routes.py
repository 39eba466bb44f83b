"""JupyterLab's own routes (``/lab``, ``/lab/api/...``) follow the policy on a shared server.

A real server with JupyterLab's extension: workspaces are each user's own, settings and
plugins change only for the server's owner and trusted users, building and installing
only for them, anything unknown is refused, and every refusal is an audit line.
"""

from __future__ import annotations

import json

import pytest

from lepton_lab.security.authz import LeptonAuthorizer
from lepton_lab.security.identity import LeptonIdentityProvider

SECRET = "owner-layout-4c1d"
THEME = "@jupyterlab/apputils-extension:themes"
USERS = ("admin", "alice", "bob", "vera", "olga", "none")
UNTRUSTED = ("bob", "vera", "olga")


@pytest.fixture
def jp_server_config(lepton_home, tokens):
    return {
        "ServerApp": {
            "jpserver_extensions": {"lepton_lab": True, "jupyterlab": True},
            "authorizer_class": LeptonAuthorizer,
            "identity_provider_class": LeptonIdentityProvider,
            "allow_unauthenticated_access": False,
        }
    }


@pytest.fixture
def lab(http_server_client, jp_base_url, jp_serverapp, tokens):
    """``await lab(who, method, path, body=None)`` -> (status, body text); no redirect is followed."""

    async def call(who, method, path, body=None):
        headers = {}
        if who != "none":
            token = jp_serverapp.identity_provider.token if who == "admin" else tokens[who]
            headers["Authorization"] = f"token {token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = "{}"
        r = await http_server_client.fetch(jp_base_url + path, method=method, body=body, headers=headers,
                                           raise_error=False, follow_redirects=False, request_timeout=120)
        return r.code, r.body.decode("utf-8", "replace")

    return call


def workspace(space: str, marker: str) -> dict:
    return {"data": {"layout-restorer:data": {"main": {"current": marker}}}, "metadata": {"id": space}}


async def test_every_lab_route_is_guarded(jp_serverapp):
    from tornado.routing import Router

    found = []

    def walk(router, seen):
        if id(router) in seen:
            return
        seen.add(id(router))
        for rule in getattr(router, "rules", []):
            if isinstance(rule.target, Router):
                walk(rule.target, seen)
            elif isinstance(rule.target, type):
                found.append(rule.target)

    walk(jp_serverapp.web_app.default_router, set())
    lab = [c for c in found if any(c.__mro__[i].__module__.split(".")[0] in ("jupyterlab", "jupyterlab_server")
                                   for i in range(len(c.__mro__)))]
    assert len(lab) >= 10
    bare = [c for c in lab if not getattr(c, "lepton_guarded", False)
            and c.__module__.split(".")[0] in ("jupyterlab", "jupyterlab_server")]
    assert not bare, bare
    resources = {c.auth_resource for c in lab if getattr(c, "lepton_guarded", False)}
    assert {"lab:workspaces", "lab:settings", "lab:translations", "lab:listings", "lab:themes"} <= resources
    assert "lab:unknown" not in resources  # every handler of this JupyterLab is named in LAB_HANDLERS


async def test_lab_route_identity_matrix(lab, as_user):
    code, _ = await lab("admin", "PUT", "lab/api/workspaces/team-ws", workspace("team-ws", SECRET))
    assert code == 204
    tried, got_through, server_errors = 0, [], []

    def note(who, method, path, code, text, denied):
        nonlocal tried
        tried += 1
        if code >= 500:
            server_errors.append(f"{who}: {method} {path} -> {code} {text[:200]}")
        elif (denied and code < 300) or SECRET in text and who != "admin":
            got_through.append(f"{who}: {method} {path} -> {code} {text[:200]}")

    reads = ["lab", "lab/tree/x.ipynb", "lab/api/workspaces", "lab/api/workspaces/team-ws", "lab/api/settings",
             f"lab/api/settings/{THEME}", "lab/api/translations", "lab/api/translations/en",
             "lab/api/listings/@jupyterlab/extensionmanager-extension/listings.json",
             "lab/api/themes/@jupyterlab/theme-light-extension/index.css", "lab/api/build", "lab/api/plugins"]
    for who in USERS:
        for path in reads:
            code, text = await lab(who, "GET", path)
            note(who, "GET", path, code, text, denied=who == "none")
            if who != "none" and path != "lab/api/build":
                assert code == 200, (who, path, code, text[:200])
        if who == "admin":
            continue
        # writes every user may make land in their own workspace, never in the owner's
        for method, body in (("PUT", workspace("team-ws", f"{who}-layout")), ("DELETE", None)):
            code, text = await lab(who, method, "lab/api/workspaces/team-ws", body)
            note(who, method, "lab/api/workspaces/team-ws", code, text, denied=who == "none")
    for who in (*UNTRUSTED, "none"):
        for method, path, body in (("PUT", f"lab/api/settings/{THEME}", {"raw": '{"theme": "JupyterLab Dark"}'}),
                                   ("POST", "lab/api/build", {}), ("DELETE", "lab/api/build", None),
                                   ("POST", "lab/api/extensions", {"cmd": "install", "extension_name": "x"}),
                                   ("POST", "lab/api/plugins", {"cmd": "disable", "plugin_name": "x"})):
            code, text = await lab(who, method, path, body)
            note(who, method, path, code, text, denied=True)
            assert code in (401, 403), (who, method, path, code)
            if who != "none":
                message = json.loads(text)["message"]
                assert "\n" not in message and "trusted:" in message and who in message
    # the owner's workspace is as the owner left it
    code, text = await lab("admin", "GET", "lab/api/workspaces/team-ws")
    assert code == 200 and SECRET in text
    print(f"lab matrix: {tried} requests, {len(got_through)} unauthorized successes, "
          f"{len(server_errors)} server errors")
    assert not server_errors, "\n".join(server_errors)
    assert not got_through, "\n".join(got_through)
    _, log = await as_user("admin", "lepton", "api", "audit", params={"outcome": "deny", "user": "bob"})
    lab_denials = [e for e in log["entries"] if e["resource"].startswith("lab:")]
    assert {e["resource"] for e in lab_denials} == {"lab:settings", "lab:build", "lab:extensions", "lab:plugins"}
    assert all(e["reason"] and "\n" not in e["reason"] and e["request_id"] for e in lab_denials)


async def test_workspaces_are_each_users_own(lab):
    assert (await lab("bob", "PUT", "lab/api/workspaces/default", workspace("default", "bob-here")))[0] == 204
    assert (await lab("vera", "PUT", "lab/api/workspaces/default", workspace("default", "vera-here")))[0] == 204
    code, text = await lab("bob", "GET", "lab/api/workspaces/default")
    assert code == 200 and "bob-here" in text and "vera-here" not in text
    code, text = await lab("bob", "GET", "lab/api/workspaces")
    assert code == 200 and json.loads(text)["workspaces"]["ids"] == ["default"]
    code, text = await lab("admin", "GET", "lab/api/workspaces")
    assert "bob-here" not in text and "vera-here" not in text
    code, _ = await lab("vera", "DELETE", "lab/api/workspaces/default")
    assert code == 204
    assert "bob-here" in (await lab("bob", "GET", "lab/api/workspaces/default"))[1]
    for body in ("not json", [1], {"metadata": {}}, {"data": {}}):
        assert (await lab("bob", "PUT", "lab/api/workspaces/x", body if body != "not json" else "{{"))[0] == 400


async def test_settings_change_for_the_owner_and_trusted_users(lab):
    body = {"raw": '{"theme": "JupyterLab Dark"}'}
    for who in ("admin", "alice"):
        code, text = await lab(who, "PUT", f"lab/api/settings/{THEME}", body)
        assert code == 204, (who, text[:200])
    code, text = await lab("bob", "GET", f"lab/api/settings/{THEME}")
    assert code == 200 and "JupyterLab Dark" in text


def test_unknown_lab_requests_are_refused():
    from lepton_lab.security.lab_rules import decide_lab
    from lepton_lab.security.policy import default_policy

    policy = default_policy("owner")
    for action, resource in (("write", "lab:translations"), ("read", "lab:unknown"), ("write", "lab:page"),
                             ("execute", "lab:workspaces")):
        for user in ("owner", "bob"):
            decision = decide_lab(policy, user, action, resource, "owner")
            assert not decision.allowed and "\n" not in decision.reason
