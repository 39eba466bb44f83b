"""The hub rig itself: real accounts, a real JupyterHub, servers and kernels running as their users.

A managed service runs as a third account and authenticates every caller with the caller's own
Hub token (``HubAuthenticated``), the way the Lepton control plane does: a kernel's own
``JUPYTERHUB_API_TOKEN`` reaches it only when the Hub grants that user the service's access scope.
"""

from __future__ import annotations

import json
import os
import pwd
import time

import psutil
import pytest

from tests.hub.kernel import Kernel, run_in_kernel
from tests.hub.rig import Hub, OSUsers, free_port, group_exists, processes_of, require_root
from tests.hub.shared_venv import install_proxy, make_shared_venv

pytestmark = pytest.mark.timeout(900)

# A Hub-managed service that answers who called it (as the Hub says) and which account it runs as.
WHOAMI_SERVICE = """
import os
from urllib.parse import urlparse
from jupyterhub.services.auth import HubAuthenticated
from jupyterhub.utils import url_path_join
from tornado import ioloop, web

class WhoAmI(HubAuthenticated, web.RequestHandler):
    @web.authenticated
    def get(self):
        self.write({"caller": self.get_current_user(), "service_uid": os.getuid()})

    def get_login_url(self):
        raise web.HTTPError(403, "no access to this service")

app = web.Application([(url_path_join(os.environ["JUPYTERHUB_SERVICE_PREFIX"], "whoami"), WhoAmI)])
url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
app.listen(url.port, url.hostname)
ioloop.IOLoop.current().start()
"""

KERNEL_CALLS_SERVICE = """
import json, os, urllib.error, urllib.request
req = urllib.request.Request(os.environ["WHOAMI_URL"] + "whoami",
                             headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
try:
    print(json.dumps({"status": 200, "body": json.load(urllib.request.urlopen(req, timeout=30))}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
"""

TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def rig():
    """Accounts alice (team-a), bob (team-b) and svc; a Hub with both servers up and a whoami service as svc."""
    require_root()
    start = time.monotonic()
    venv = make_shared_venv()
    install_proxy()
    TIMES["venv + proxy ready"] = time.monotonic() - start
    with OSUsers("alice", "bob", "svc") as users:
        alice, bob, svc = users["alice"], users["bob"], users["svc"]
        groups = {"team-a": [alice.name], "team-b": [bob.name]}
        service_port = free_port()
        hub = Hub(
            venv, [alice.name, bob.name], groups=groups,
            services=[{"name": "whoami", "url": f"http://127.0.0.1:{service_port}", "user": svc.name,
                       "command": [f"{venv}/bin/python", "-c", WHOAMI_SERVICE]}],
            roles=[{"name": "whoami-users", "scopes": ["access:services!service=whoami"], "groups": ["team-a"]}],
            server_token_scopes=["users:activity!user", "access:servers!server", "access:services!service=whoami"],
        )
        hub.spawner_env["WHOAMI_URL"] = hub.service_url("whoami")
        t = time.monotonic()
        with hub:
            TIMES["hub start"] = time.monotonic() - t
            for user in (alice, bob):
                t = time.monotonic()
                hub.start_server(user.name)
                TIMES[f"spawn {user.short}"] = time.monotonic() - t
            yield hub, users
        uids = {u.uid for u in users.users.values()}
    TIMES["whole module"] = time.monotonic() - start
    print("\nhub rig timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMES.items()))
    # Everything the accounts ran is gone, and so are the accounts and their groups.
    assert not processes_of(uids)
    assert not any(_exists(n) for n in (alice.name, bob.name, svc.name))
    assert not group_exists(alice.name) and not group_exists(bob.name)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_each_server_runs_as_its_users_account(rig):
    hub, users = rig
    for short in ("alice", "bob"):
        user = users[short]
        proc = psutil.Process(hub.server_pid(user.name))
        assert proc.uids().real == proc.uids().effective == user.uid
        assert "jupyterhub-singleuser" in " ".join(proc.cmdline())


def test_a_kernel_runs_as_its_user_and_cannot_open_another_users_file(rig):
    hub, users = rig
    alice, bob = users["alice"], users["bob"]
    secret = bob.home / "secret.txt"
    secret.write_text("bob's only\n")
    os.chown(secret, bob.uid, bob.gid)
    secret.chmod(0o700)

    code = f"import os\nprint(os.getuid())\nprint(open({str(secret)!r}).read())"
    out, err = run_in_kernel(hub, alice.name, code)
    assert out.strip() == str(alice.uid)
    assert err is not None and err[0] == "PermissionError"

    out, err = run_in_kernel(hub, bob.name, code)  # the same code, as the file's owner
    assert err is None
    assert out.split() == [str(bob.uid), "bob's", "only"]


def test_a_kernel_keeps_state_between_runs(rig):
    hub, users = rig
    with Kernel(hub, users["alice"].name) as k:
        assert k.run("x = 41") == ("", None)
        assert k.run("print(x + 1)") == ("42\n", None)
        _, err = k.run("1 / 0")
        assert err == ("ZeroDivisionError", "division by zero")


def test_a_kernels_own_hub_token_reaches_a_service_only_with_the_users_grant(rig):
    hub, users = rig
    alice, svc = users["alice"], users["svc"]
    out, err = run_in_kernel(hub, alice.name, KERNEL_CALLS_SERVICE)
    assert err is None, err
    answer = json.loads(out)
    assert answer["status"] == 200
    assert answer["body"]["service_uid"] == svc.uid
    caller = answer["body"]["caller"]
    assert (caller["name"], caller["kind"], caller["groups"]) == (alice.name, "user", ["team-a"])
    assert "access:services!service=whoami" in caller["scopes"]

    # bob's group holds no grant for the service: his kernel's token is refused.
    out, err = run_in_kernel(hub, users["bob"].name, KERNEL_CALLS_SERVICE)
    assert err is None, err
    assert json.loads(out) == {"status": 403}
