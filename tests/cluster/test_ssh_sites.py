"""Sites launched over SSH on two edge hosts: real ``sshd`` daemons inside two network namespaces.

The namespaces hang off one bridge on this machine (addresses in 127/8 with
``route_localnet``), each with an OpenSSH daemon of the test's own (private host
key, key-only login, the test's ``authorized_keys``). A TLS cluster whose
scheduler advertises the bridge address starts a local cloud worker and, over
SSH, ``lepton-lab worker`` processes on the hosts; work placed by site runs in
the right namespace; scaling moves workers round-robin over a site's hosts; and
stopping the cluster leaves no process and no file of the test on either host.
Bridge, namespaces, daemons and ``route_localnet`` are put back in teardown.
"""

from __future__ import annotations

import os
import re
import sys

import psutil
import pytest
import yaml
from distributed import Client

from lepton_lab.cluster.launcher import ClusterManager, ManagedCluster
from lepton_lab.cluster.profiles import profile_from_dict
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ClusterError, ConfigError
from lepton_lab.security.certs import ClusterCA, IssuedCert
from lepton_lab.security.policy import parse_policy_text
from lepton_lab.services import Actor, Services
from tests.helpers import eventually
from tests.ssh_hosts import SSHD, RigMissing, netns_inode, sh, ssh_hosts

pytestmark = pytest.mark.timeout(900)

START = 300.0  # seconds a bring-up may take on a busy machine


@pytest.fixture
def edge_hosts(tmp_path):
    """Two namespaces on a bridge, each running its own sshd (:mod:`tests.ssh_hosts`); put back after."""
    try:
        with ssh_hosts(tmp_path) as hosts:
            yield hosts
    except RigMissing as e:
        pytest.fail(f"{e}; this test makes network namespaces", pytrace=False)
    for h in hosts["hosts"]:
        assert not os.path.exists(f"/run/netns/{h['ns']}")
        assert h["sshd"].poll() is not None


def ssh_site(name: str, workers: int, hosts: list[str], edge: dict) -> dict:
    return {"name": name, "kind": "edge", "workers": workers, "threads": 1, "memory": "512MiB",
            "launch": "ssh", "hosts": hosts, "ssh_user": edge["user"], "ssh_key": edge["key"],
            "known_hosts": edge["known_hosts"], "python": sys.executable}


def processes_in(ns: str) -> list[psutil.Process]:
    """Processes whose network namespace is ``ns`` (the ``host``), its sshd excluded."""
    want = f"net:[{netns_inode(ns)}]"
    found = []
    for p in psutil.process_iter(["pid", "exe", "cmdline"]):
        try:
            if os.readlink(f"/proc/{p.pid}/ns/net") == want and p.info["exe"] != SSHD:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def left_in(ns: str, timeout: float = 30.0) -> list[psutil.Process]:
    """Processes still in ``ns`` once those that already exited are reaped (polled up to ``timeout`` s)."""
    eventually(lambda: not processes_in(ns), timeout)
    return processes_in(ns)


def worker_processes_in(ns: str) -> list[psutil.Process]:
    found = []
    for p in processes_in(ns):
        try:
            if "lepton_lab.cli" in " ".join(p.cmdline()) or "multiprocessing" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def worker_info(client: Client) -> dict[str, dict]:
    workers = workers_now(client)
    return {w["name"]: {**w, "address": address} for address, w in workers.items()}


def where_it_ran(client: Client, site: str) -> tuple[str, str, str]:
    """(worker name, worker address, network namespace) of a task placed on ``site``."""
    def probe():
        from distributed import get_worker

        w = get_worker()
        return w.name, w.address, os.readlink("/proc/self/ns/net")

    return client.submit(probe, resources={site: 1}, pure=False).result(timeout=120)


def remote_dirs(managed: ManagedCluster) -> dict[str, str]:
    return {n: w.remote_dir for n, w in managed.cluster.workers.items() if getattr(w, "remote_dir", "")}


def test_profile_rejects_bad_ssh_fields():
    for bad, field in [({"launch": "nomad"}, "launch"), ({"launch": "ssh"}, "hosts"),
                       ({"launch": "ssh", "hosts": ["bad host"]}, "hosts[0]"),
                       ({"hosts": ["10.0.0.2"]}, "hosts"),
                       ({"launch": "ssh", "hosts": ["10.0.0.2"], "ssh_user": ""}, "ssh_user")]:
        with pytest.raises(ConfigError, match=re.escape(f"sites[0].{field}:")):
            profile_from_dict("p", {"sites": [{"name": "edge-a", **bad}]}, "p")


def test_ssh_site_needs_a_tls_cluster():
    prof = profile_from_dict("p", {"sites": [{"name": "edge-a", "launch": "ssh", "hosts": ["127.0.0.1"]}]}, "p")
    with pytest.raises(ConfigError, match="needs a cluster with TLS"):
        ManagedCluster.start(prof, gpus=[])


def test_ssh_sites_start_place_scale_and_leave_nothing(edge_hosts, tmp_path):
    a, b = edge_hosts["hosts"]
    ca = ClusterCA.create("ssh-sites", tmp_path / "ca")
    security = ca.security("scheduler", "worker", "client", common_name="lepton-test")
    prof = profile_from_dict("ssh-test", {"sites": [
        {"name": "cloud", "kind": "cloud", "workers": 1, "memory": "512MiB"},
        ssh_site("edge-hospital-a", 1, [a["address"]], edge_hosts),
        ssh_site("edge-hospital-b", 1, [b["address"], a["address"]], edge_hosts),
    ]}, "ssh-test")
    ns_of = {a["ns"]: f"net:[{netns_inode(a['ns'])}]", b["ns"]: f"net:[{netns_inode(b['ns'])}]"}
    seen_dirs: dict[str, str] = {}
    managed = ManagedCluster.start(prof, name="ssh-sites", security=security, host="0.0.0.0",
                                   advertise=edge_hosts["host_ip"], gpus=[], ca_dir=ca.directory, timeout=START)
    try:
        assert managed.address.startswith(f"tls://{edge_hosts['host_ip']}:")
        client = Client(managed.address, security=security, timeout=60, set_as_default=False)
        try:
            info = worker_info(client)
            assert sorted(info) == ["cloud-0", "edge-hospital-a-0", "edge-hospital-b-0"]
            assert info["edge-hospital-a-0"]["resources"] == {"edge": 1, "edge-hospital-a": 1}
            assert info["edge-hospital-a-0"]["address"].startswith(f"tls://{a['ip']}:")
            assert info["edge-hospital-b-0"]["address"].startswith(f"tls://{b['ip']}:")
            assert info["cloud-0"]["memory_limit"] == info["edge-hospital-a-0"]["memory_limit"] == 512 * 2**20
            seen_dirs.update(remote_dirs(managed))
            assert set(seen_dirs) == {"edge-hospital-a-0", "edge-hospital-b-0"}
            assert all(os.path.isfile(f"{d}/worker.crt") for d in seen_dirs.values())

            # Work placed by site runs in that site's namespace (its host), over TLS.
            name, address, netns = where_it_ran(client, "edge-hospital-a")
            assert (name, netns) == ("edge-hospital-a-0", ns_of[a["ns"]])
            assert address.startswith(f"tls://{a['ip']}:")
            name, address, netns = where_it_ran(client, "edge-hospital-b")
            assert (name, netns) == ("edge-hospital-b-0", ns_of[b["ns"]])
            name, address, netns = where_it_ran(client, "cloud")
            assert name == "cloud-0" and netns not in ns_of.values()
            # A task that needs data from both hosts moves it between them.
            x = client.submit(lambda: list(range(1000)), resources={"edge-hospital-a": 1}, pure=False)
            y = client.submit(lambda v: sum(v), x, resources={"edge-hospital-b": 1}, pure=False)
            assert y.result(timeout=120) == sum(range(1000))

            # Scale up: the second worker of site b goes round-robin to its second host (a).
            assert managed.scale(2, "edge-hospital-b", timeout=START)["edge-hospital-b"] == 2
            info = worker_info(client)
            assert info["edge-hospital-b-1"]["address"].startswith(f"tls://{a['ip']}:")
            assert info["edge-hospital-b-1"]["resources"] == {"edge": 1, "edge-hospital-b": 1}
            seen_dirs.update(remote_dirs(managed))
            assert len(worker_processes_in(a["ns"])) >= 2 * 2  # two workers there, each with its nanny's child

            # Scale down to nothing: site b's processes and directories are gone from both hosts.
            dirs_b = {n: d for n, d in seen_dirs.items() if n.startswith("edge-hospital-b-")}
            assert managed.scale(0, "edge-hospital-b", timeout=START)["edge-hospital-b"] == 0
            assert not any(n.startswith("edge-hospital-b") for n in worker_info(client))
            assert worker_processes_in(b["ns"]) == []
            assert not any(os.path.exists(d) for d in dirs_b.values())
            assert "edge-hospital-a-0" in worker_info(client)

            # ... and back: edge-hospital-b-0 returns to its first host.
            managed.scale(1, "edge-hospital-b", timeout=START)
            seen_dirs.update(remote_dirs(managed))
            name, address, netns = where_it_ran(client, "edge-hospital-b")
            assert (name, netns) == ("edge-hospital-b-0", ns_of[b["ns"]])
        finally:
            client.close()
    finally:
        managed.close()
    # Teardown leaves no worker process and no file of the test on either host.
    for h in (a, b):
        assert worker_processes_in(h["ns"]) == [], h["ns"]
        assert left_in(h["ns"]) == [], h["ns"]
    assert seen_dirs and not any(os.path.exists(d) for d in seen_dirs.values())


def test_a_host_that_refuses_the_key_fails_with_the_reason(edge_hosts, tmp_path):
    a = edge_hosts["hosts"][0]
    ca = ClusterCA.create("ssh-refused", tmp_path / "ca")
    security = ca.security("scheduler", "worker", "client", common_name="lepton-test")
    stranger = tmp_path / "stranger_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger))
    site = {**ssh_site("edge-hospital-a", 1, [a["address"]], edge_hosts), "ssh_key": str(stranger)}
    prof = profile_from_dict("refused", {"sites": [site]}, "refused")
    with pytest.raises(ClusterError, match=r"edge-hospital-a-0.*over ssh: PermissionDenied"):
        ManagedCluster.start(prof, name="ssh-refused", security=security, host="0.0.0.0",
                             advertise=edge_hosts["host_ip"], gpus=[], ca_dir=ca.directory, timeout=START)
    assert worker_processes_in(a["ns"]) == []


POLICY = """
version: 1
teams: [medical]
members:
  alice: {medical: analyst}
quotas:
  teams:
    medical: {max_workers: 8, max_clusters: 3}
# Tasks of the server's own clusters run as its account: alice may hold a certificate for them.
trusted: [alice]
"""


def test_a_server_cluster_starts_its_ssh_site_at_the_advertised_address(edge_hosts, tmp_path, monkeypatch):
    """The server's path: a profile in profiles.yaml, the cluster's own CA, the advertised scheduler."""
    b = edge_hosts["hosts"][1]
    home = tmp_path / "home"
    monkeypatch.setenv("LEPTON_HOME", str(home))
    monkeypatch.delenv("LEPTON_AUDIT", raising=False)
    monkeypatch.delenv("LEPTON_PROFILES", raising=False)
    monkeypatch.setenv("LEPTON_SCHEDULER_HOST", "0.0.0.0")
    monkeypatch.setenv("LEPTON_SCHEDULER_ADVERTISE", edge_hosts["host_ip"])
    home.mkdir()
    (home / "profiles.yaml").write_text(yaml.safe_dump({"profiles": {"hospital-b": {"sites": [
        {"name": "cloud", "kind": "cloud", "workers": 0},
        ssh_site("edge-hospital-b", 1, [b["address"]], edge_hosts),
    ]}}}))
    services = Services(parse_policy_text(POLICY), home=home, manager=ClusterManager())
    alice = Actor("alice")
    dirs: dict[str, str] = {}
    try:
        c = services.create_cluster(alice, team="medical", profile="hospital-b", name="ssh-served")
        dirs = remote_dirs(c)
        assert c.info().scheduler_address.startswith(f"tls://{edge_hosts['host_ip']}:")
        assert [(s.name, s.workers) for s in c.info().sites] == [("cloud", 0), ("edge-hospital-b", 1)]
        creds = services.credentials(alice, "ssh-served")
        cert = IssuedCert.from_dict({k: creds[k] for k in IssuedCert.__dataclass_fields__})
        with Client(creds["scheduler_address"], security=cert.security(), timeout=60,
                    set_as_default=False) as client:
            name, address, netns = where_it_ran(client, "edge-hospital-b")
        assert name == "edge-hospital-b-0" and address.startswith(f"tls://{b['ip']}:")
        assert netns == f"net:[{netns_inode(b['ns'])}]"
        services.stop_cluster(alice, "ssh-served")
    finally:
        services.manager.stop_all()
        services.close()
    assert list(dirs) == ["edge-hospital-b-0"] and not os.path.exists(dirs["edge-hospital-b-0"])
    assert left_in(b["ns"]) == []
