"""The team deployment, end to end: a real JupyterHub, real Linux accounts, the control plane.

Two analysts in two teams (Hub groups ``team-alpha`` and ``team-beta``, mapped to teams by the
policy), the Lepton control plane as a Hub-managed service under an account of its own, each
analyst's server spawned by the Hub as their own account in client mode. Code runs in their
kernels over the Jupyter kernel protocol, as an analyst's would.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.hub.rig import Hub, OSUsers, control_plane_state, free_port, processes_of, run_in_kernel, sudoers_rule
from tests.hub.shared_venv import make_shared_venv

POLICY = """\
version: 1
teams: [alpha, beta]
members: {{}}
groups:
  team-alpha: {{alpha: analyst}}
  team-beta: {{beta: analyst}}
quotas:
  default_team: {{max_workers: 8, max_clusters: 4}}
  default_user: {{max_workers: 4, max_clusters: 2}}
"""
SERVICE = "lepton"
TEMPLATE = json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Triage\nAlpha's start."}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@dataclass
class Team:
    hub: Hub
    users: OSUsers
    state: Path
    control_plane: str  # the service's own URL, prefix included
    alice: str
    bob: str

    def kernel(self, user: str, code: str) -> str:
        out, error = run_in_kernel(self.hub, user, code)
        assert error is None, f"{user}'s kernel: {error}\n{out}"
        return out

    def last_json(self, user: str, code: str):
        lines = [ln for ln in self.kernel(user, code).splitlines() if ln.strip()]
        return json.loads(lines[-1])

    def audit(self) -> list[dict]:
        path = self.state / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def team():
    venv = make_shared_venv()
    base = Path(tempfile.mkdtemp(prefix="lepton-team-"))
    base.chmod(0o711)
    sudoers = Path(f"/etc/sudoers.d/lepton-test-{os.getpid()}")
    try:
        with OSUsers("cp", "alice", "bob") as users:
            cp, alice, bob = users["cp"].name, users["alice"].name, users["bob"].name
            state = control_plane_state(users["cp"], POLICY.format(), where=base / "state")
            templates = state / "templates" / "alpha"
            templates.mkdir(parents=True)
            (templates / "triage.ipynb").write_text(TEMPLATE)
            for p in (state / "templates", templates, templates / "triage.ipynb"):
                os.chown(p, users["cp"].uid, users["cp"].gid)
            sudoers_rule(sudoers, cp, f"{alice},{bob}", venv / "bin" / "python")
            port = free_port()
            url = f"http://127.0.0.1:{port}/services/{SERVICE}/"
            service = {"name": SERVICE, "url": f"http://127.0.0.1:{port}", "user": cp,
                       "command": [str(venv / "bin" / "python"), "-m", "lepton_lab.hub.control_plane"],
                       "environment": {"LEPTON_HOME": str(state), "LEPTON_GC_FREEZE": "0",
                                       "LEPTON_TEMPLATES": str(state / "templates")}}
            roles = [
                {"name": "lepton-control-plane", "scopes": ["read:users:groups", "read:users:name"],
                 "services": [SERVICE]},
                {"name": "user", "scopes": ["self", f"access:services!service={SERVICE}"]},
            ]
            with Hub(venv, [alice, bob], groups={"team-alpha": [alice], "team-beta": [bob]},
                     services=[service], roles=roles,
                     server_token_scopes=["users:activity!user", "access:servers!server",
                                          f"access:services!service={SERVICE}"],
                     spawner_env={"LEPTON_CONTROL_PLANE_URL": url}) as hub:
                _wait_for(hub, url, hub.token_for(alice))
                hub.start_server(alice)
                hub.start_server(bob)
                yield Team(hub, users, state, url, alice, bob)
    finally:
        sudoers.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def _wait_for(hub: Hub, url: str, token: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            r = requests.get(url + "lepton/api/whoami", headers={"Authorization": f"token {token}"}, timeout=5)
            if r.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"the control plane did not answer at {url}{hub._tail()}")
        time.sleep(0.25)


READS = """
import json, os
found = {}
for path in PATHS:
    try:
        with open(path, "rb") as f:
            f.read(1)
        found[path] = "read"
    except OSError as e:
        found[path] = type(e).__name__
print(json.dumps(found))
"""


def test_a_kernel_reads_neither_the_control_planes_state_nor_another_users_files(team):
    bob_home = Path(pwd.getpwnam(team.bob).pw_dir)
    secret = bob_home / "notes.txt"
    secret.write_text("beta's secret")
    uid = pwd.getpwnam(team.bob).pw_uid
    os.chown(secret, uid, uid)
    secret.chmod(0o600)
    paths = [str(team.state / "policy.yaml"), str(team.state / "audit.jsonl"), str(team.state / "keys"),
             str(secret)]
    found = team.last_json(team.alice, f"PATHS = {paths!r}\n" + READS)
    assert found == {p: "PermissionError" for p in paths}
    # The kernel runs as alice, not as the control plane or the Hub.
    assert team.last_json(team.alice, "import os, json; print(json.dumps(os.getuid()))") == \
        pwd.getpwnam(team.alice).pw_uid


def test_a_kernel_acts_with_its_users_rights_and_its_cluster_runs_as_that_user(team):
    me = team.last_json(team.alice, (
        "import json\nfrom lepton_lab.rest import RestTransport, find_server\n"
        "server = find_server()\nprint(json.dumps([server.how, RestTransport(server).call('GET', 'whoami')]))"))
    how, whoami = me
    assert how == "control plane"
    assert whoami["name"] == team.alice and whoami["roles"] == {"alpha": "analyst"}
    code = f"""
import json, os, lepton_lab
h = lepton_lab.up(name="alpha-one", cloud=1, edge=0)
def try_read(path):
    try:
        open(path, "rb").read(1)
        return "read"
    except OSError as e:
        return type(e).__name__
print(json.dumps({{"id": h.id, "task_uid": h.client.submit(os.getuid, pure=False).result(),
                  "scheduler_uid": h.client.run_on_scheduler(os.getuid),
                  "task_reads_policy": h.client.submit(try_read, {str(team.state / 'policy.yaml')!r}).result()}}))
"""
    got = team.last_json(team.alice, code)
    alice_uid = pwd.getpwnam(team.alice).pw_uid
    assert got["task_uid"] == alice_uid and got["scheduler_uid"] == alice_uid
    assert got["task_reads_policy"] == "PermissionError"
    cluster_id = got["id"]
    # bob, in team beta, cannot see, use, scale or stop it.
    seen = team.last_json(team.bob, (
        "import json\nfrom lepton_lab.rest import RestTransport, find_server\n"
        "t = RestTransport(find_server())\nprint(json.dumps([c['id'] for c in t.list()]))"))
    assert cluster_id not in seen
    refusals = team.last_json(team.bob, f"""
import json
from lepton_lab.rest import RestTransport, find_server
from lepton_lab.errors import LeptonError
t = RestTransport(find_server())
out = {{}}
for verb, call in (("use", lambda: t.security({cluster_id!r})), ("scale", lambda: t.scale({cluster_id!r}, 3, "cloud")),
                   ("stop", lambda: t.stop({cluster_id!r}))):
    try:
        call()
        out[verb] = "done"
    except LeptonError as e:
        out[verb] = type(e).__name__
print(json.dumps(out))
""")
    assert refusals == {"use": "NotFound", "scale": "NotFound", "stop": "NotFound"}
    # alice stops her own; nothing of hers is left running but her server and kernel.
    team.kernel(team.alice, "import lepton_lab\nlepton_lab.connect_cluster(%r)\nlepton_lab.down()" % cluster_id)
    audit = team.audit()
    assert any(a["user"] == team.alice and a["action"] == "clusters:create" and a["outcome"] == "allow"
               for a in audit)


def test_models_stay_in_their_team(team):
    published = team.last_json(team.alice, (
        "import json, lepton_lab\n"
        "m = lepton_lab.publish(b'alpha weights', 'scorer', team='alpha')\n"
        "print(json.dumps(m['version']))"))
    assert published == 1
    assert team.last_json(team.alice, (
        "import json, lepton_lab\nprint(json.dumps(bytes(lepton_lab.load('scorer', team='alpha')).decode()))"
    )) == "alpha weights"
    refused = team.last_json(team.bob, """
import json, lepton_lab
from lepton_lab.errors import LeptonError
out = {}
for what, call in (("load", lambda: lepton_lab.load("scorer", team="alpha")),
                   ("list", lambda: lepton_lab.models("alpha"))):
    try:
        got = call()
        out[what] = [m["name"] for m in got] if what == "list" else "loaded"
    except LeptonError as e:
        out[what] = type(e).__name__
print(json.dumps(out))
""")
    # Another team's models do not exist for bob: not loadable, not listed.
    assert refused == {"load": "NotFound", "list": []}
    denials = [a for a in team.audit() if a["user"] == team.bob and a["outcome"] == "deny"]
    assert any("alpha" in a["resource"] for a in denials)


def test_the_sidebar_reaches_the_control_plane_through_the_users_own_server(team):
    token = team.hub.token_for(team.alice)
    r = requests.get(f"{team.hub.url}/user/{team.alice}/lepton/api/whoami",
                     headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == team.alice and r.json()["teams"] == ["alpha"]
    # Bob's token opens nothing on alice's server (the Hub refuses), nor on the control plane as alice.
    bob_token = team.hub.token_for(team.bob)
    r = requests.get(f"{team.hub.url}/user/{team.alice}/lepton/api/whoami",
                     headers={"Authorization": f"token {bob_token}"}, timeout=30, allow_redirects=False)
    assert r.status_code in (302, 403)
    r = requests.get(team.control_plane + "lepton/api/whoami", headers={"Authorization": f"token {bob_token}"},
                     timeout=30)
    assert r.json()["name"] == team.bob
    # No token, or the Hub's tokens of nobody: nothing.
    assert requests.get(team.control_plane + "lepton/api/whoami", timeout=30).status_code in (401, 403)
    # The control plane serves the Lepton API only: no kernels, no files.
    for path in ("api/kernels", "api/contents", "api/terminals"):
        r = requests.get(team.control_plane + path, headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code in (403, 404), (path, r.status_code)


def test_the_control_planes_state_is_its_own(team):
    info = team.state.stat()
    assert info.st_uid == pwd.getpwnam(team.users["cp"].name).pw_uid
    assert info.st_mode & 0o077 == 0
    # Nothing of the analysts runs as the control plane's account but the service itself.
    cp_uid = pwd.getpwnam(team.users["cp"].name).pw_uid
    mine = processes_of({cp_uid})
    names = {" ".join(p.cmdline()) for p in mine}
    # (Its audit log's writer is a child of the service, started by it.)
    writers = [p for p in mine if "lepton_lab.security.audit_writer" in " ".join(p.cmdline())]
    assert all("lepton_lab.hub.control_plane" in " ".join(p.parent().cmdline()) for p in writers), names
    assert all("lepton_lab.hub.control_plane" in n or "sudo" in n or "lepton_lab.security.audit_writer" in n
               for n in names), names


def test_the_sidebar_in_a_hub_users_lab_shows_their_own_identity_and_team(team):
    """Chromium logs in to the Hub as alice; her lab's Lepton panel answers from the control plane."""
    from playwright.sync_api import expect, sync_playwright

    from lepton_lab.testing import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(f"{team.hub.url}/hub/login", timeout=60_000)
            page.fill("input[name=username]", team.alice)
            page.fill("input[name=password]", team.hub.password)
            page.click("[type=submit]")
            page.wait_for_url(f"**/user/{team.alice}/**", timeout=60_000)
            page.goto(f"{team.hub.url}/user/{team.alice}/lab?reset", timeout=60_000)
            page.wait_for_selector(".jp-LabShell", timeout=60_000)
            tab = page.locator('.jp-SideBar.jp-mod-left li[data-id="lepton-lab-panel"]')
            tab.wait_for(timeout=60_000)
            tab.click()
            whoami = page.locator('[data-testid="lepton-whoami"]')
            expect(whoami).to_contain_text(team.alice, timeout=30_000)
            expect(whoami).to_contain_text("alpha")
            expect(page.locator('[data-testid="lepton-clusters"]')).to_be_visible()
        finally:
            browser.close()


def test_the_users_server_forwards_cluster_requests_dashboards_and_the_live_stream(team):
    import websocket  # websocket-client

    token = team.hub.token_for(team.alice)
    own = f"{team.hub.url}/user/{team.alice}/lepton/"
    auth = {"Authorization": f"token {token}"}
    r = requests.post(own + "api/clusters", json={"team": "alpha", "profile": "local",
                                                   "workers": {"cloud": 1, "edge": 0}}, headers=auth, timeout=120)
    assert r.status_code == 201, r.text
    cluster = r.json()
    try:
        # The dashboard link names the user's own server, which forwards it to the control plane.
        link = cluster["dashboard_link"]
        assert link.startswith(f"/user/{team.alice}/lepton/dashboard/{cluster['id']}/"), link
        page = requests.get(team.hub.url + link, headers=auth, timeout=60)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"], page.text[:300]
        pane = requests.get(own + f"dashboard/{cluster['id']}/individual-task-stream", headers=auth, timeout=60)
        assert pane.status_code == 200 and "bokeh" in pane.text.lower()
        # Another team's user reaches none of it through their own server.
        bob = {"Authorization": f"token {team.hub.token_for(team.bob)}"}
        theirs = f"{team.hub.url}/user/{team.bob}/lepton/dashboard/{cluster['id']}/status"
        assert requests.get(theirs, headers=bob, timeout=60).status_code == 404
        # The live allocation stream comes through the user's server's WebSocket.
        ws_url = own.replace("http://", "ws://") + f"api/clusters/{cluster['id']}/stream"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=60)
        try:
            message = json.loads(ws.recv())
        finally:
            ws.close()
        assert message["cluster"] == cluster["id"] and message["workers"], message
    finally:
        r = requests.delete(own + f"api/clusters/{cluster['id']}", headers=auth, timeout=120)
        assert r.status_code == 204, r.text


def test_a_template_is_copied_into_the_users_own_files(team):
    token = team.hub.token_for(team.alice)
    r = requests.post(f"{team.hub.url}/user/{team.alice}/lepton/api/templates/copy", json={"team": "alpha",
                      "name": "triage"}, headers={"Authorization": f"token {token}"}, timeout=60)
    assert r.status_code == 201, r.text
    path = Path(pwd.getpwnam(team.alice).pw_dir) / r.json()["path"]
    assert path.stat().st_uid == pwd.getpwnam(team.alice).pw_uid  # written by alice's own server
    assert "Alpha's start" in path.read_text()
    bob = team.hub.token_for(team.bob)
    r = requests.post(f"{team.hub.url}/user/{team.bob}/lepton/api/templates/copy", json={"team": "alpha",
                      "name": "triage"}, headers={"Authorization": f"token {bob}"}, timeout=60)
    assert r.status_code == 404 and "\n" not in r.json()["message"]
