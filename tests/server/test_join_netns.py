"""A cluster created through the REST API is joined from another network host with only a join token.

The Jupyter server's schedulers listen on every interface and advertise this host's
address on a veth link (``LEPTON_SCHEDULER_HOST`` / ``LEPTON_SCHEDULER_ADVERTISE``).
A ``lepton-lab worker`` inside a network namespace redeems the token at the server
(reached through a relay on the link address, as a reverse proxy would expose it)
and joins the scheduler at the address the token's redemption names; a task placed
on its site runs there. Namespace, veth and ``route_localnet`` are put back in teardown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading

import pytest
from distributed import Client

from lepton_lab.security.certs import IssuedCert
from tests.helpers import netns_host

SITE = "edge-hospital-z"

pytestmark = pytest.mark.timeout(300)



@pytest.fixture
def netns():
    """A namespace joined to this host by a veth pair, both ends in 127/8 with route_localnet on."""
    with netns_host("join", seed=1, third_octet=1) as host:
        yield host


class Relay:
    """Forwards TCP connections from ``listen_host`` to ``127.0.0.1:port`` (the test server's port)."""

    def __init__(self, listen_host: str, port: int):
        self.target = ("127.0.0.1", port)
        self.server = socket.create_server((listen_host, 0))
        self.address = self.server.getsockname()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=30)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.server.close()


def cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "lepton_lab.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


async def test_rest_cluster_is_joined_from_another_host_with_the_token_alone(
        netns, as_user, jp_http_port, jp_base_url, lepton_home, monkeypatch, tmp_path):
    monkeypatch.setenv("LEPTON_SCHEDULER_HOST", "0.0.0.0")
    monkeypatch.setenv("LEPTON_SCHEDULER_ADVERTISE", netns["host_ip"])
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c
    assert c["scheduler_address"].startswith(f"tls://{netns['host_ip']}:")
    env = {**os.environ, "LEPTON_HOME": str(lepton_home)}
    issued = await asyncio.to_thread(cli, "join-token", c["name"], "--site", SITE, env=env)
    assert issued.returncode == 0, issued.stderr
    assert f"scheduler: {c['scheduler_address']}" in issued.stderr
    assert "reachable from this machine only" not in issued.stderr
    token = issued.stdout.strip()

    relay = Relay(netns["host_ip"], jp_http_port)
    server = f"http://{relay.address[0]}:{relay.address[1]}{jp_base_url}"
    elsewhere = tmp_path / "other-host-home"
    elsewhere.mkdir()
    worker = subprocess.Popen(
        [netns["ip"], "netns", "exec", netns["ns"], sys.executable, "-m", "lepton_lab.cli", "worker",
         "--site", SITE, "--join-token", token, "--server", server, "--host", netns["ns_ip"], "--index", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LEPTON_HOME": str(elsewhere)})
    try:
        for _ in range(240):
            _, snap = await as_user("alice", "lepton", "api", "clusters", c["id"], "allocation")
            if any(w["name"] == f"{SITE}-0" for w in snap["workers"]):
                break
            if worker.poll() is not None:
                break
            await asyncio.sleep(0.5)
        else:
            worker.terminate()
            raise AssertionError(f"the worker did not join: {worker.communicate(timeout=20)}")
        assert worker.poll() is None, worker.communicate(timeout=20)
        code, cred = await as_user("alice", "lepton", "api", "clusters", c["id"], "credentials")
        assert code == 200 and cred["scheduler_address"] == c["scheduler_address"]
        cert = IssuedCert.from_dict({k: cred[k] for k in ("cert_pem", "key_pem", "ca_pem", "role",
                                                          "common_name", "expires")})

        def run_on_site():
            with Client(cred["scheduler_address"], security=cert.security(), timeout=30,
                        set_as_default=False) as client:
                fut = client.submit(lambda: __import__("distributed").get_worker().address,
                                    resources={SITE: 1}, pure=False)
                return fut.result(timeout=60)

        where = await asyncio.to_thread(run_on_site)
        assert where.startswith(f"tls://{netns['ns_ip']}:")  # ran on the other host, over TLS
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        relay.close()
