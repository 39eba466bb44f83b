"""The scheduler's gate: a worker serves only the site its certificate names; revoked certificates die at once."""

import getpass
import ssl
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from distributed import LocalCluster, Security

import lepton_lab
from lepton_lab.cluster.clients import open_client
from lepton_lab.cluster.gate import (
    TOPIC,
    SiteGate,
    push_revocations,
    push_scheduler_certificate,
    worker_refusal,
)
from lepton_lab.cluster.launcher import ManagedCluster
from lepton_lab.cluster.profiles import resolve_profile
from lepton_lab.cluster.workers import workers_now
from lepton_lab.security.certs import ClusterCA
from lepton_lab.security.peers import peer_identity
from lepton_lab.security.revocation import CertBook
from lepton_lab.services.certs import renew_cluster

SITE = "edge-hospital-a"


def _files(tmp_path, issued, stem):
    paths = []
    for suffix, text in (("ca.crt", issued.ca_pem), ("crt", issued.cert_pem), ("key", issued.key_pem)):
        path = tmp_path / f"{stem}.{suffix}"
        path.write_text(text)
        paths.append(str(path))
    return paths


def _decoded(tmp_path, issued):
    path = tmp_path / "decode.crt"
    path.write_text(issued.cert_pem)
    return ssl._ssl._test_decode_cert(str(path))  # the dictionary getpeercert() gives for it


@pytest.fixture
def gated(tmp_path):
    ca = ClusterCA.create("trial", tmp_path / "ca")
    security = ca.security("scheduler", "client", common_name="control-plane")
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None, security=security,
                      protocol="tls://", scheduler_kwargs={"plugins": [SiteGate("trial")]}) as cluster, \
            open_client(cluster, security=security) as client:
        yield ca, security, cluster, client


def _worker(address, files, *args):
    ca, cert, key = files
    return subprocess.run([sys.executable, "-m", "lepton_lab.cli", "worker", "--scheduler", address,
                           "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key, "--death-timeout", "20",
                           *args], capture_output=True, text=True, timeout=60)


def _dask_worker(address, files, name, resources):
    ca, cert, key = files
    return subprocess.run([sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny",
                           "--name", name, "--resources", resources, "--tls-ca-file", ca, "--tls-cert", cert,
                           "--tls-key", key, "--death-timeout", "20", "--no-dashboard"],
                          capture_output=True, text=True, timeout=60)


def test_certificates_name_site_and_kind(tmp_path):
    ca = ClusterCA.create("trial", tmp_path / "ca")
    who = peer_identity(_decoded(tmp_path, ca.issue("w", "worker", site=SITE)))
    assert (who.cluster, who.role, who.name, who.site, who.kind) == ("trial", "worker", "w", SITE, "edge")
    token = ca.join_token("hospital-b", kind="edge")
    redeemed = peer_identity(_decoded(tmp_path, ca.redeem(token)))
    assert (redeemed.site, redeemed.kind) == ("hospital-b", "edge")
    assert worker_refusal(redeemed, "trial", "hospital-b-3", {"edge": 1, "hospital-b": 1, "GPU": 1}) is None
    assert "not a worker name of site hospital-b" in worker_refusal(redeemed, "trial", "hospital-c-3", {})
    assert "claims site kind cloud beyond site hospital-b (edge)" in worker_refusal(
        redeemed, "trial", "hospital-b-3", {"cloud": 1})
    assert "for cluster trial, not other" in worker_refusal(redeemed, "other", "hospital-b-3", {})
    client = peer_identity(_decoded(tmp_path, ca.issue("alice")))
    assert "a client certificate" in worker_refusal(client, "trial", "hospital-b-3", {})
    unbound = peer_identity(_decoded(tmp_path, ca.issue("w", "worker")))
    assert worker_refusal(unbound, "trial", "hospital-b-3", {}) == "its certificate names no site"
    with pytest.raises(lepton_lab.errors.ConfigError, match="site kind 'fog'"):
        ca.issue("w", "worker", site=SITE, kind="fog")


def test_worker_claiming_another_site_is_refused_and_never_gets_tasks(gated, tmp_path):
    ca, _, cluster, client = gated
    files = _files(tmp_path, ca.issue("a-worker", "worker", site=SITE), "a")
    address = cluster.scheduler_address
    # by its name (--site)
    liar = _worker(address, files, "--site", "edge-hospital-b", "--index", "0")
    last = liar.stderr.strip().splitlines()[-1]
    assert liar.returncode == 2, liar.stderr
    assert last.startswith("lepton-lab worker: cluster trial refused worker edge-hospital-b-0: "
                           "its name edge-hospital-b-0 is not a worker name"), liar.stderr
    # by its resources, with the right name
    for resources in ("edge=1,edge-hospital-a=1,edge-hospital-b=1", "cloud=1,edge-hospital-a=1"):
        sneak = _dask_worker(address, files, f"{SITE}-7", resources)
        assert sneak.returncode != 0
    assert workers_now(client) == {}
    reasons = [e["reason"] for _, e in client.get_events(TOPIC)]
    assert any("edge-hospital-b-0 is not a worker name of site edge-hospital-a" in r for r in reasons)
    assert any("claims resources edge-hospital-b beyond site edge-hospital-a" in r for r in reasons)
    assert any("claims site kind cloud beyond" in r for r in reasons)
    assert all("\n" not in r for r in reasons)
    waiting = client.submit(sum, [1, 2], resources=lepton_lab.on_site("edge-hospital-b"), pure=False)
    # the honest worker joins and takes its site's work; the other site's task finds no worker
    honest = subprocess.Popen([sys.executable, "-m", "lepton_lab.cli", "worker", "--scheduler", address,
                               "--tls-ca-file", files[0], "--tls-cert", files[1], "--tls-key", files[2],
                               "--site", SITE, "--index", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [2, 3], resources=lepton_lab.on_site(SITE), pure=False).result(30) == 5
        # claiming another site later, through set_resources, removes it
        names = [w["name"] for w in workers_now(client).values()]
        assert names == [f"{SITE}-0"]

        async def claim(dask_worker):
            await dask_worker.set_resources(**{"edge-hospital-b": 1})

        client.run(claim, wait=False)
        for _ in range(600):
            events = [e["reason"] for _, e in client.get_events(TOPIC)]
            if not workers_now(client) and len(events) > len(reasons):
                break
            time.sleep(0.05)
        assert not workers_now(client)
        assert "claims resources edge-hospital-b beyond site edge-hospital-a" in events[-1]
        assert waiting.status == "pending"
    finally:
        honest.terminate()
        honest.wait(30)


def test_revoked_client_is_cut_off_and_refused(gated, tmp_path):
    ca, security, cluster, client = gated
    address = cluster.scheduler_address
    alice, bob = ca.issue("alice"), ca.issue("bob")
    with open_client(address, security=alice.security(), timeout=5) as a, \
            open_client(address, security=bob.security(), timeout=5):
        assert a.run_on_scheduler(lambda: 7) == 7
        serials = ca.revoke(name="alice", role="client")
        assert serials == [alice.serial] and ca.revoked() == serials
        # only the control plane (a scheduler certificate) may revoke
        with pytest.raises(PermissionError, match="only the control plane"):
            push_revocations(address, Security(require_encryption=True, tls_ca_file=alice.ca_pem,
                                               tls_scheduler_cert=alice.cert_pem, tls_scheduler_key=alice.key_pem),
                             serials)
        assert push_revocations(address, security, serials) >= 1
    with pytest.raises(Exception, match="revoked") as refused:
        open_client(address, security=alice.security(), timeout=5)
    assert "\n" not in str(refused.value)
    with open_client(address, security=bob.security(), timeout=5) as b:
        assert b.run_on_scheduler(lambda: 8) == 8
    expired = ca.issue("carol", lifetime=timedelta(minutes=-1))
    with pytest.raises(Exception):
        open_client(address, security=expired.security(), timeout=2)


def test_scheduler_certificate_is_renewed_without_restart(gated):
    ca, security, cluster, client = gated
    address = cluster.scheduler_address
    before = client.scheduler_comm.comm.extra_info["peercert"]["serialNumber"]
    fresh = ca.issue("control-plane", "scheduler")
    push_scheduler_certificate(address, security, fresh.cert_pem, fresh.key_pem)
    with open_client(address, security=security, timeout=5) as again:
        after = again.scheduler_comm.comm.extra_info["peercert"]["serialNumber"]
        assert int(after, 16) == fresh.serial and after != before
        assert again.run_on_scheduler(lambda: 9) == 9
    assert client.run_on_scheduler(lambda: 10) == 10  # the old connection lives on


def test_account_cluster_scheduler_runs_the_gate_and_renews_live(tmp_path):
    # defined here so that it travels by value to workers that cannot import this module
    def _held_certificate(dask_worker):
        from cryptography import x509

        from lepton_lab.security.peers import KIND_URI, SITE_URI

        cert = x509.load_pem_x509_certificate(open(dask_worker.security.tls_worker_cert, "rb").read())
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        site = next(u[len(SITE_URI):] for u in uris if u.startswith(SITE_URI))
        kind = next(u[len(KIND_URI):] for u in uris if u.startswith(KIND_URI))
        return cert.serial_number, site, kind

    ca = ClusterCA.create("acct-gate", tmp_path / "ca")
    security = ca.security("scheduler", "worker", "client", common_name="lepton-server")
    profile = resolve_profile({"name": "gate", "sites": [{"name": "cloud", "kind": "cloud", "workers": 1},
                                                          {"name": "edge", "kind": "edge", "workers": 1}]})
    cluster = ManagedCluster.start(profile, name="acct-gate", security=security, ca_dir=tmp_path / "ca",
                                   run_as=getpass.getuser(), gpus=[])
    try:
        with open_client(cluster.address, security=security, timeout=10) as client:
            plugins = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
            assert "lepton-site-gate" in plugins
            # each worker process holds a certificate for its own site and kind
            sites = {r.name.rsplit("-", 1)[0]: (r.site, r.kind) for r in CertBook(tmp_path / "ca").issued()
                     if r.role == "worker" and r.site != "*"}
            assert sites == {"cloud-0": ("cloud", "cloud"), "edge-0": ("edge", "edge")}
            before = client.scheduler_comm.comm.extra_info["peercert"]["serialNumber"]
            held = client.run(_held_certificate)
            renew_cluster(cluster, ca)
        with open_client(cluster.address, security=security, timeout=10) as again:
            assert again.scheduler_comm.comm.extra_info["peercert"]["serialNumber"] != before
            assert again.submit(lambda: 3, resources=lepton_lab.on_site("edge"), pure=False).result(30) == 3
            renewed = again.run(_held_certificate)
        # every worker holds a new certificate, for the same site and kind
        assert set(renewed) == set(held) and all(renewed[a][0] != held[a][0] for a in held)
        assert sorted(r[1:] for r in renewed.values()) == [("cloud", "cloud"), ("edge", "edge")]
    finally:
        cluster.close()
