"""deploy/hub/jupyterhub_config.py, run as written by a real JupyterHub.

The example's site values come from ``$LEPTON_HUB_*``: fresh accounts stand in for the
control plane's ``lepton`` and the people, fresh OS groups for ``lepton-users`` and the team
groups. The rig adds only loopback ports, the proxy, the Hub's state directory and its own
admin service; authentication (PAM), groups, the control plane service and the roles are the file's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.hub.rig import (
    Hub,
    OSUsers,
    control_plane_state,
    deploy_env,
    free_port,
    group_policy,
    processes_of,
    require_root,
    run_in_kernel,
)
from tests.hub.shared_venv import ROOT, make_shared_venv

pytestmark = pytest.mark.timeout(900)

CONFIG = ROOT / "deploy" / "hub" / "jupyterhub_config.py"

KERNEL_VIEW = """
import json, os, urllib.error, urllib.request
def get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": "token " + token})
    try:
        return 200, json.load(urllib.request.urlopen(req, timeout=30))
    except urllib.error.HTTPError as e:
        return e.code, None
token = os.environ["JUPYTERHUB_API_TOKEN"]
_, me = get(os.environ["JUPYTERHUB_API_URL"] + "/user", token)
status, cp = get(os.environ["LEPTON_CONTROL_PLANE_URL"] + "lepton/api/whoami", token)
try:
    os.listdir(os.environ["STATE_DIR"])
    state = "listed"
except OSError as e:
    state = type(e).__name__
print(json.dumps({"uid": os.getuid(), "scopes": me["scopes"], "groups": me["groups"],
                  "control_plane": [status, cp and cp.get("name")], "state": state}))
"""


@pytest.fixture(scope="module")
def deployment():
    require_root()
    venv = make_shared_venv()
    with OSUsers("lepton", "alice", "bob", "carol",
                 groups={"users": ["alice", "bob", "carol"], "medical": ["alice"], "finance": ["bob"]}) as users:
        cp = users["lepton"]
        teams = {"medical": users.groups["medical"], "finance": users.groups["finance"]}
        state = control_plane_state(cp, group_policy(teams))
        port = free_port()
        hub = Hub(venv, [users[s].name for s in ("alice", "bob", "carol")], base_config=CONFIG,
                  hub_env=deploy_env(venv, cp, state, users.groups["users"], list(teams.values()), port),
                  extra_config=f"c.Spawner.environment['STATE_DIR'] = {str(state)!r}\n")
        with hub:
            hub.api("POST", f"users/{users['carol'].name}")  # allowed to log in, in no team group
            for short in ("alice", "carol"):
                hub.start_server(users[short].name)
            yield hub, users, state, port


def _control_plane(port: int) -> psutil.Process:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] and "lepton_lab.hub.control_plane" in p.info["cmdline"]:
                return p
        time.sleep(0.25)
    raise AssertionError("no control plane process")


def test_the_hub_runs_the_control_plane_as_its_own_account_with_groups_from_the_os(deployment):
    hub, users, state, port = deployment
    cp = _control_plane(port)
    assert cp.uids().real == cp.uids().effective == users["lepton"].uid
    assert Path(cp.cwd()) == state
    groups = {g["name"]: sorted(g["users"]) for g in hub.api("GET", "groups").json()}
    assert groups == {users.groups["medical"]: [users["alice"].name], users.groups["finance"]: [users["bob"].name]}


def test_a_team_members_kernel_reaches_the_control_plane_as_themselves_and_no_further(deployment):
    hub, users, state, _ = deployment
    alice = users["alice"]
    out, err = run_in_kernel(hub, alice.name, KERNEL_VIEW)
    assert err is None, f"{err}\n{out}"
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["uid"] == alice.uid
    assert "access:services!service=lepton" in seen["scopes"]
    assert seen["groups"] == [users.groups["medical"]]
    assert seen["control_plane"] == [200, alice.name]
    assert seen["state"] == "PermissionError"


def test_someone_in_no_team_group_is_turned_away_by_the_hub(deployment):
    hub, users, _, port = deployment
    carol = users["carol"]
    out, err = run_in_kernel(hub, carol.name, KERNEL_VIEW)
    assert err is None, f"{err}\n{out}"
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["uid"] == carol.uid
    assert not any("service=lepton" in s for s in seen["scopes"])
    assert seen["control_plane"][0] in (401, 403)  # no identity the control plane accepts
    # Straight to the service's port, with a token of carol's own: refused the same way.
    r = requests.get(f"http://127.0.0.1:{port}/services/lepton/lepton/api/whoami",
                     headers={"Authorization": f"token {hub.token_for(carol.name)}"}, timeout=30)
    assert r.status_code in (401, 403)


def test_nothing_of_the_people_runs_as_the_control_planes_account(deployment):
    _, users, _, _ = deployment
    names = [" ".join(p.cmdline()) for p in processes_of({users["lepton"].uid})]
    assert names and all("lepton_lab.hub.control_plane" in n for n in names), names
