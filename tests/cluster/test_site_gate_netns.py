"""The gate, seen from another network host: a worker inside a network namespace with an
``edge-hospital-a`` certificate may not claim ``edge-hospital-b``, and a revoked user's client
there is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from distributed import Client, LocalCluster, get_worker

import lepton_lab
from lepton_lab.cluster.gate import SiteGate, push_revocations
from lepton_lab.cluster.workers import workers_now
from lepton_lab.security.certs import ClusterCA
from tests.helpers import netns_host

pytestmark = pytest.mark.timeout(300)

CONNECT = """
import sys
from distributed import Client, Security
ca, cert, key, address = sys.argv[1:]
try:
    with Client(address, security=Security(require_encryption=True, tls_ca_file=ca, tls_client_cert=cert,
                                           tls_client_key=key), timeout=10) as c:
        print("connected", c.run_on_scheduler(lambda: 5))
except Exception as e:
    print(f"refused: {e}")
"""


def _files(directory, issued, stem):
    paths = []
    for suffix, text in (("ca.crt", issued.ca_pem), ("crt", issued.cert_pem), ("key", issued.key_pem)):
        path = directory / f"{stem}.{suffix}"
        path.write_text(text)
        paths.append(str(path))
    return paths


def _in_ns(ns, *cmd, timeout=60):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def test_worker_and_client_on_another_host_are_held_to_their_certificates(tmp_path):
    with netns_host("gate", seed=3, third_octet=3) as net:
        ca = ClusterCA.create("far", tmp_path / "ca")
        security = ca.security("scheduler", "client", common_name="control-plane", hosts=(net["host_ip"],))
        with LocalCluster(n_workers=0, host=net["host_ip"], dashboard_address=None, security=security,
                          protocol="tls://", scheduler_kwargs={"plugins": [SiteGate("far")]}) as cluster, \
                Client(cluster, security=security) as client:
            address = cluster.scheduler_address
            worker = _files(tmp_path, ca.issue("a", "worker", hosts=(net["ns_ip"],), site="edge-hospital-a"), "w")
            tls = ["--tls-ca-file", worker[0], "--tls-cert", worker[1], "--tls-key", worker[2]]
            base = [sys.executable, "-m", "lepton_lab.cli", "worker", "--scheduler", address, "--host", net["ns_ip"],
                    "--index", "0", "--death-timeout", "20", *tls]
            liar = _in_ns(net["ns"], *base, "--site", "edge-hospital-b")
            assert liar.returncode == 2
            assert "refused worker edge-hospital-b-0" in liar.stderr.strip().splitlines()[-1]
            assert workers_now(client) == {}
            honest = subprocess.Popen(["ip", "netns", "exec", net["ns"], *base, "--site", "edge-hospital-a"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                client.wait_for_workers(1, timeout=60)
                where = client.submit(lambda: get_worker().address, pure=False,
                                      resources=lepton_lab.on_site("edge-hospital-a")).result(30)
                assert where.startswith(f"tls://{net['ns_ip']}:")  # ran on the other host
            finally:
                honest.terminate()
                honest.wait(30)
            alice = _files(tmp_path, ca.issue("alice", hosts=(net["ns_ip"],)), "alice")
            script = tmp_path / "connect.py"
            script.write_text(CONNECT)
            ok = _in_ns(net["ns"], sys.executable, str(script), *alice, address)
            assert ok.stdout.strip() == "connected 5", ok.stderr
            push_revocations(address, security, ca.revoke(name="alice", role="client"))
            refused = _in_ns(net["ns"], sys.executable, str(script), *alice, address)
            assert refused.stdout.strip().startswith("refused: cluster far refused this connection: "
                                                     "its certificate (client alice"), refused.stdout
            assert "is revoked" in refused.stdout
