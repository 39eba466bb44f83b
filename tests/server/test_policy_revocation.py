"""Nothing outlives its permission: a policy edit revokes what it took away, on the clusters of that team.

A TLS cluster of the medical team, alice's and the admin's clients connected to it. An
edit of the policy file that takes ``clusters:use`` away from alice is read by the
server's watch; within one watch period her connection is closed, her certificate
refused, and the audit log says why; the admin's connection carries on. The admin door
(``POST /lepton/api/admin/revoke``) and ``lepton-lab revoke`` cut a user off on demand;
a bad policy edit is refused in one line and the policy in force stays.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from distributed import Client

from lepton_lab.security.certs import IssuedCert
from lepton_lab.security.identity import local_user

pytestmark = pytest.mark.timeout(240)

FIELDS = ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")
WATCH = 2.0  # seconds between the watch's passes in these tests


@pytest.fixture
def jp_server_config(jp_server_config, monkeypatch):
    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", str(WATCH))
    return jp_server_config


def edit_policy(path, old: str, new: str) -> None:
    """Change the policy file the way an editor saving it does: a new file put in place."""
    text = path.read_text()
    assert old in text
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text.replace(old, new))
    os.replace(tmp, path)


async def connect(as_user, who: str, cluster_id: str) -> tuple[Client, IssuedCert]:
    code, cred = await as_user(who, "lepton", "api", "clusters", cluster_id, "credentials")
    assert code == 200, cred
    cert = IssuedCert.from_dict({k: cred[k] for k in FIELDS})
    client = await asyncio.to_thread(Client, cred["scheduler_address"], security=cert.security(), timeout=10,
                                     set_as_default=False)
    assert await asyncio.to_thread(lambda: client.submit(lambda: 6 * 7, pure=False).result(timeout=30)) == 42
    return client, cert


def refusal(address: str, cert: IssuedCert) -> str:
    """What a new connection with ``cert`` is told; empty when it is let in."""
    try:
        with Client(address, security=cert.security(), timeout=5, set_as_default=False):
            return ""
    except Exception as e:
        return str(e)


def _client_ids(dask_scheduler) -> list[str]:
    return list(dask_scheduler.clients)


def scheduler_clients(services, cluster_id: str) -> set[str]:
    """The clients connected to the cluster's scheduler (a process of its own), asked through the server's client."""
    return set(services._client(services.manager.get(cluster_id)).run_on_scheduler(_client_ids))


async def until(predicate, timeout: float) -> float:
    """Seconds until ``await predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEPTON_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "lepton_lab.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


async def test_policy_edit_cuts_off_who_lost_clusters_use_and_admin_doors_revoke(as_user, jp_serverapp,
                                                                                 lepton_home):
    services = jp_serverapp.web_app.settings["lepton"]
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c

    async def connected() -> set[str]:
        return await asyncio.to_thread(scheduler_clients, services, c["id"])

    async def gone(client_id: str) -> bool:
        return client_id not in await connected()
    address = c["scheduler_address"]
    alice, alice_cert = await connect(as_user, "alice", c["id"])
    admin, admin_cert = await connect(as_user, "admin", c["id"])
    clients: list[Client] = [alice, admin]
    try:
        assert {alice.id, admin.id} <= await connected()

        # alice becomes a viewer in medical: no clusters:use any more
        edit_policy(lepton_home / "policy.yaml", "alice: {medical: analyst}", "alice: {medical: viewer}")
        took = await until(lambda: gone(alice.id), timeout=WATCH + 5)
        assert took <= WATCH + 5
        said = await asyncio.to_thread(refusal, address, alice_cert)
        assert "revoked" in said and "\n" not in said
        assert admin.id in await connected()  # only what the edit took away goes
        assert await asyncio.to_thread(lambda: admin.submit(lambda: 1 + 1, pure=False).result(timeout=30)) == 2
        assert services.policy.roles_of("alice") == {"medical": "viewer"}
        _, whoami = await as_user("alice", "lepton", "api", "whoami")
        assert "clusters:use" not in whoami["permissions"]
        _, log = await as_user("admin", "lepton", "api", "audit", params={"action": "clusters:revoke"})
        [line] = log["entries"]
        assert line["resource"] == "users:alice" and line["user"] == "lepton-server"
        assert line["reason"].startswith("policy reload: alice has role viewer in medical")
        assert line["detail"]["certificates"] == 1 and line["detail"]["connections_closed"] >= 1
        _, log = await as_user("admin", "lepton", "api", "audit", params={"action": "policy:reload"})
        assert [e["outcome"] for e in log["entries"]] == ["allow"]
        code, again = await as_user("alice", "lepton", "api", "clusters", c["id"], "credentials")
        assert code == 403

        # the admin door: a user cut off on demand, on the clusters of the teams the caller administers
        code, out = await as_user("admin", "lepton", "api", "admin", "revoke", method="POST",
                                  body={"user": local_user()})
        assert code == 200 and out["certificates"] == {c["id"]: 1}, out
        await until(lambda: gone(admin.id), timeout=10)
        assert "revoked" in await asyncio.to_thread(refusal, address, admin_cert)

        # the command line, from outside the server, through the files it keeps
        again, again_cert = await connect(as_user, "admin", c["id"])  # still permitted: a new certificate
        clients.append(again)
        done = await asyncio.to_thread(cli, "revoke", local_user(), home=lepton_home)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"revoked 1 certificate(s) of {local_user()} on 1 cluster(s)"
        await until(lambda: gone(again.id), timeout=10)
        assert "revoked" in await asyncio.to_thread(refusal, address, again_cert)
        _, log = await as_user("admin", "lepton", "api", "audit", params={"action": "clusters:revoke"})
        assert [(e["user"], e["resource"], e["detail"]["certificates"]) for e in log["entries"]] == [
            ("lepton-server", "users:alice", 1), (local_user(), f"users:{local_user()}", 1),
            (local_user(), f"users:{local_user()}", 1)]
    finally:
        for client in clients:
            await asyncio.to_thread(client.close, 5)


async def test_bad_policy_edit_is_refused_and_the_old_policy_stays(as_user, jp_serverapp, lepton_home):
    services = jp_serverapp.web_app.settings["lepton"]
    before = services.policy
    edit_policy(lepton_home / "policy.yaml", "alice: {medical: analyst}", "alice: {medical: wizard}")

    async def refused_lines():
        _, log = await as_user("admin", "lepton", "api", "audit",
                               params={"action": "policy:reload", "outcome": "deny"})
        return log["entries"]

    start = time.monotonic()
    while not await refused_lines():
        assert time.monotonic() - start < WATCH + 5, "the watch did not read the edited file"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2 * WATCH)
    [line] = await refused_lines()  # once per edit, not once per pass
    assert "wizard" in line["reason"] and "the policy in force stays" in line["reason"]
    assert services.policy is before
    _, whoami = await as_user("alice", "lepton", "api", "whoami")
    assert whoami["roles"] == {"medical": "analyst"}

    code, out = await as_user("admin", "lepton", "api", "admin", "policy", method="POST")
    assert code == 400 and "wizard" in out["message"] and "\n" not in out["message"]
    assert services.policy is before

    # the doors are an admin's: others are refused and audited
    for who in ("alice", "vera"):
        for path, body in ((("admin", "revoke"), {"user": "bob"}), (("admin", "policy"), {})):
            code, out = await as_user(who, "lepton", "api", *path, method="POST", body=body)
            assert code == 403, (who, path, out)
    _, log = await as_user("admin", "lepton", "api", "audit", params={"user": "vera", "outcome": "deny"})
    assert {e["resource"] for e in log["entries"]} == {"lepton:admin"}
    for body in ({}, {"user": ""}, {"user": "a b"}, {"user": 3}, {"user": "bob", "team": "x"}):
        code, out = await as_user("admin", "lepton", "api", "admin", "revoke", method="POST", body=body)
        assert code == 400, (body, out)

    # fixed: the door reads it at once
    edit_policy(lepton_home / "policy.yaml", "alice: {medical: wizard}", "alice: {medical: lead}")
    code, out = await as_user("admin", "lepton", "api", "admin", "policy", method="POST")
    assert code == 200 and out["teams"] == ["medical", "finance"] and out["revoked"] == [], out
    _, whoami = await as_user("alice", "lepton", "api", "whoami")
    assert whoami["roles"] == {"medical": "lead"}
    code, out = await as_user("admin", "lepton", "api", "admin", "revoke", method="POST", body={"user": "bob"})
    assert code == 200 and out == {"user": "bob", "certificates": {}, "revoked": 0}
