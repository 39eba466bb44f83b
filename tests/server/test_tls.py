"""Clusters the server starts speak TLS only; certificates go only to users allowed to use them."""

import asyncio

import pytest

from lepton_lab.cluster.clients import open_client
from lepton_lab.security.certs import ClusterCA, IssuedCert


async def _connect(address, security, timeout=3):
    def go():
        with open_client(address, security=security, timeout=timeout) as c:
            return c.submit(lambda: 41 + 1, pure=False).result(timeout=20)

    return await asyncio.get_running_loop().run_in_executor(None, go)


async def test_issued_certificate_connects_and_nothing_else_does(as_user, tmp_path):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201
    code, cred = await as_user("alice", "lepton", "api", "clusters", c["id"], "credentials")
    assert code == 200 and cred["tls"] and cred["scheduler_address"] == c["scheduler_address"]
    assert "PRIVATE KEY" in cred["key_pem"]
    fields = ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")
    cert = IssuedCert.from_dict({k: cred[k] for k in fields})
    assert await _connect(c["scheduler_address"], cert.security()) == 42
    # no certificate at all
    with pytest.raises(Exception):
        await _connect(c["scheduler_address"], None)
    # a certificate from another cluster's CA
    other = ClusterCA.create("other", tmp_path / "other-ca").issue("mallory")
    with pytest.raises(Exception):
        await _connect(c["scheduler_address"], other.security())
    # a plain tcp:// address on the same port
    with pytest.raises(Exception):
        await _connect(c["scheduler_address"].replace("tls://", "tcp://"), None)
    # the viewer may look but gets no certificate
    code, err = await as_user("vera", "lepton", "api", "clusters", c["id"], "credentials")
    assert code == 403 and "clusters:use" in err["message"]
