"""Cluster CA: files, certificates, join tokens, and real mutual TLS with Dask."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import ssl
import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from distributed import Client, Scheduler, Worker
from distributed.security import Security

from lepton_lab.errors import AlreadyExists, ConfigError, NotFound, PermissionDenied
from lepton_lab.security.certs import ClusterCA, IssuedCert


@pytest.fixture
def ca(tmp_path):
    return ClusterCA.create("c-test", tmp_path / "ca")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def eku(pem: str) -> list:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- the CA -----------------------------------------------------------------------------


def test_create_stores_private_files_and_load_reads_them_back(ca, tmp_path):
    assert mode(tmp_path / "ca") == 0o700
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    assert mode(tmp_path / "ca" / "ca.crt") == 0o600
    again = ClusterCA.load(tmp_path / "ca")
    assert again.cluster_id == "c-test"
    assert again.fingerprint == ca.fingerprint and len(ca.fingerprint) == 64
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_create_twice_and_load_nothing(ca, tmp_path):
    with pytest.raises(AlreadyExists, match="already holds a cluster CA"):
        ClusterCA.create("c-test", tmp_path / "ca")
    with pytest.raises(NotFound, match="no cluster CA in"):
        ClusterCA.load(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cluster id"):
        ClusterCA.create("../escape", tmp_path / "x")


def test_load_refuses_a_key_from_another_ca(ca, tmp_path):
    other = ClusterCA.create("c-other", tmp_path / "other")
    (tmp_path / "ca" / "ca.key").write_bytes((other.directory / "ca.key").read_bytes())
    with pytest.raises(ConfigError, match="ca.key does not belong to ca.crt"):
        ClusterCA.load(tmp_path / "ca")


# -- issuing ----------------------------------------------------------------------------


def test_issued_certificate_is_signed_by_the_ca_with_sans_and_lifetime(ca):
    issued = ca.issue(
        "alice", "client", hosts=("127.0.0.1", "localhost", "node-1.example"), lifetime=timedelta(hours=2)
    )
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "node-1.example"]
    left = cert.not_valid_after_utc - datetime.now(timezone.utc)
    assert timedelta(hours=1, minutes=58) < left <= timedelta(hours=2)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.ca_pem == ca.ca_pem and issued.role == "client"
    assert IssuedCert.from_dict(json.loads(json.dumps(issued.to_dict()))) == issued


def test_extended_key_usage_per_role(ca):
    assert eku(ca.issue("alice", "client").cert_pem) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for role in ("worker", "scheduler"):
        assert eku(ca.issue(role, role).cert_pem) == [
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ]
    with pytest.raises(ValueError, match="unknown role 'nanny'"):
        ca.issue("x", "nanny")


def test_certificates_never_outlive_the_ca(tmp_path):
    short = ClusterCA.create("short", tmp_path / "short", lifetime=timedelta(hours=1))
    cert = x509.load_pem_x509_certificate(
        short.issue("w", "worker", lifetime=timedelta(days=30)).cert_pem.encode()
    )
    assert cert.not_valid_after_utc == short.cert.not_valid_after_utc


def test_security_uses_private_files_and_requires_encryption(ca):
    security = ca.security("scheduler", "worker", "client", common_name="node")
    assert security.require_encryption is True
    assert security.tls_ca_file == str(ca.ca_file)
    for role in ("scheduler", "worker", "client"):
        for path in (getattr(security, f"tls_{role}_cert"), getattr(security, f"tls_{role}_key")):
            assert os.path.dirname(path) == str(ca.directory) and mode(path) == 0o600
    only_client = ca.security("client", common_name="alice")
    assert only_client.tls_client_cert.endswith("client-alice.crt")
    assert only_client.tls_worker_cert is None


# -- join tokens ------------------------------------------------------------------------


def test_join_token_redeems_once_for_a_worker_certificate(ca):
    token = ca.join_token("edge-1")
    assert token.startswith("ljt_")
    stored = (ca.directory / "joins.json").read_text()
    assert token not in stored and token[4:] not in stored
    assert mode(ca.directory / "joins.json") == 0o600
    issued = ClusterCA.load(ca.directory).redeem(token)  # another process, same directory
    assert issued.role == "worker" and issued.common_name.startswith("edge-1-worker-")
    x509.load_pem_x509_certificate(issued.cert_pem.encode()).verify_directly_issued_by(ca.cert)
    with pytest.raises(PermissionDenied, match="already used"):
        ca.redeem(token)


def test_expired_and_unknown_join_tokens_are_refused(ca):
    expired = ca.join_token("edge-1", ttl=timedelta(seconds=-1))
    with pytest.raises(PermissionDenied, match="expired at"):
        ca.redeem(expired)
    with pytest.raises(PermissionDenied, match="not known to cluster c-test"):
        ca.redeem("ljt_" + "A" * 43)
    other = ClusterCA.create("c-other", ca.directory.parent / "other")
    with pytest.raises(PermissionDenied, match="not known"):
        other.redeem(ca.join_token("edge-2"))
    with pytest.raises(ConfigError, match="site"):
        ca.join_token("bad site")


# -- mutual TLS with a real Dask cluster ---------------------------------------------------


def _handshake_without_certificate(address: str, ca_file: str) -> None:
    """Open TLS to the scheduler trusting its CA but showing no certificate; returns on refusal."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=3) as raw, context.wrap_socket(raw) as tls:
        # With TLS 1.3 the server's refusal arrives after the client's half of the handshake.
        try:
            tls.sendall(b"\0" * 8)
            data = tls.recv(1)
        except (ssl.SSLError, ConnectionError):
            return
        assert data == b"", "the scheduler answered a client without a certificate"


def test_dask_over_mutual_tls(ca, tmp_path):
    other = ClusterCA.create("c-other", tmp_path / "other")

    async def scenario():
        cluster_security = ca.security("scheduler", "worker", "client")
        async with Scheduler(
            security=cluster_security, protocol="tls", host="127.0.0.1", dashboard_address=":0"
        ) as s:
            assert s.address.startswith("tls://127.0.0.1:")
            async with Worker(s.address, security=cluster_security, host="127.0.0.1", nthreads=1):
                # A user's client, with a certificate received as PEM text.
                user = ca.issue("alice", "client").security()
                async with Client(s.address, security=user, asynchronous=True, timeout="5s") as client:
                    assert await client.submit(lambda x: x + 1, 41) == 42

                # A worker from another machine, joined with a one-time token.
                joined = ca.redeem(ca.join_token("edge-1")).security()
                async with Worker(s.address, security=joined, host="127.0.0.1", nthreads=1) as edge:
                    async with Client(s.address, security=user, asynchronous=True, timeout="5s") as client:
                        assert len(s.workers) == 2
                        assert await client.submit(lambda: 7, workers=[edge.address]) == 7

                foreign = other.issue("mallory")
                refused = {
                    "a client of another cluster": other.security("client"),
                    "a self-signed client": Security.temporary(),
                    # Trusts this cluster's CA, so only the scheduler's check of its certificate stops it.
                    "a client holding another CA's certificate": Security(
                        require_encryption=True,
                        tls_ca_file=ca.ca_pem,
                        tls_client_cert=foreign.cert_pem,
                        tls_client_key=foreign.key_pem,
                    ),
                }
                for label, security in refused.items():
                    with pytest.raises((OSError, TimeoutError)):
                        async with Client(s.address, security=security, asynchronous=True, timeout="3s"):
                            pytest.fail(f"{label} connected")
                await asyncio.wait_for(
                    asyncio.to_thread(_handshake_without_certificate, s.address, str(ca.ca_file)), 5
                )

    asyncio.run(asyncio.wait_for(scenario(), 30))
