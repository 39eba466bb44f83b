"""Clusters the server starts check certificates: revoked users are cut off, the scheduler's certificate renews live."""

import asyncio
from datetime import timedelta

import pytest

from lepton_lab.cluster.clients import open_client
from lepton_lab.security.certs import IssuedCert
from lepton_lab.services.certs import renew_certificates

FIELDS = ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")


def _plugins(dask_scheduler):
    return list(dask_scheduler.plugins)


def _run(address, security, fn):
    with open_client(address, security=security, timeout=5) as c:
        serial = c.scheduler_comm.comm.extra_info["peercert"]["serialNumber"]
        return serial, c.submit(fn, pure=False).result(timeout=30)


async def test_revoked_user_is_refused_and_scheduler_certificate_renews(as_user, jp_serverapp):
    services = jp_serverapp.web_app.settings["lepton"]
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201
    code, cred = await as_user("alice", "lepton", "api", "clusters", c["id"], "credentials")
    assert code == 200
    alice = IssuedCert.from_dict({k: cred[k] for k in FIELDS})
    address = c["scheduler_address"]
    first, answer = await asyncio.to_thread(_run, address, alice.security(), lambda: 6 * 7)
    assert answer == 42
    managed = services.manager.get(c["id"])
    plugins = await asyncio.to_thread(services._client(managed).run_on_scheduler, _plugins)
    assert "lepton-site-gate" in plugins

    # the scheduler's (and the local workers') certificates renew on the running cluster
    assert await asyncio.to_thread(renew_certificates, services, timedelta(hours=13)) == [c["id"]]
    second, answer = await asyncio.to_thread(_run, address, alice.security(), lambda: 5 + 5)
    assert answer == 10 and second != first
    assert await asyncio.to_thread(renew_certificates, services) == []  # nothing close to expiry now

    # alice is revoked: her certificate no longer connects; others' still do
    assert await asyncio.to_thread(services.revoke_user, "alice") == {c["id"]: 1}
    with pytest.raises(Exception, match="revoked") as refused:
        await asyncio.to_thread(_run, address, alice.security(), lambda: 1)
    assert "\n" not in str(refused.value)
    _, log = await as_user("admin", "lepton", "api", "audit", params={"action": "clusters:revoke"})
    assert [e["resource"] for e in log["entries"]] == ["users:alice"]
