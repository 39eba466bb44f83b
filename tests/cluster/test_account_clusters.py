"""Clusters whose scheduler and workers are processes of their owner's account.

Here the owner is the account running the tests (no sudo is needed for it); the
team deployment's test runs them under other Linux accounts through sudo.
"""

import getpass
import os
import tempfile
from pathlib import Path

import psutil
import pytest
from distributed import Client

from lepton_lab.cluster import accounts
from lepton_lab.cluster.launcher import ManagedCluster
from lepton_lab.cluster.profiles import resolve_profile
from lepton_lab.errors import ClusterError
from lepton_lab.security.certs import ClusterCA


def account_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if accounts.ENTRY in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def private_dirs() -> set[str]:
    tmp = Path(tempfile.gettempdir())
    return {p.name for p in tmp.glob("lepton-scheduler-*")} | {p.name for p in tmp.glob("lepton-worker-*")}


@pytest.fixture
def ca(tmp_path):
    directory = tmp_path / "ca"
    ca = ClusterCA.create("accounts-test", directory)
    return directory, ca.security("scheduler", "worker", "client", common_name="lepton-server")


def test_scheduler_and_workers_are_processes_of_the_account_and_leave_nothing(ca):
    ca_dir, security = ca
    dirs_before = private_dirs()
    cluster = ManagedCluster.start(resolve_profile("local"), name="acct", security=security, ca_dir=ca_dir,
                                   run_as=getpass.getuser(), gpus=[])
    try:
        assert cluster.address.startswith("tls://")
        assert cluster.site_counts() == {"cloud": 2, "edge": 2}
        with Client(cluster.address, security=security, timeout=10) as client:
            pids = client.run(os.getpid)
            scheduler_pid = client.run_on_scheduler(os.getpid)
            assert len(set(pids.values())) == 4
            assert os.getpid() not in {*pids.values(), scheduler_pid}  # nothing runs in this process
            assert client.submit(lambda: os.getuid(), pure=False).result() == os.getuid()
            names = sorted(w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
            assert names == ["cloud-0", "cloud-1", "edge-0", "edge-1"]
        assert len(account_processes()) == 5
        cluster.scale(1, "edge")
        assert cluster.site_counts() == {"cloud": 2, "edge": 1}
        assert len(account_processes()) == 4
    finally:
        cluster.close()
    assert account_processes() == []
    assert private_dirs() <= dirs_before  # each process removed its private directory


def test_an_account_that_does_not_exist_is_one_line_and_leaves_nothing(ca):
    ca_dir, security = ca
    with pytest.raises(ClusterError) as e:
        ManagedCluster.start(resolve_profile("local"), name="nobody", security=security, ca_dir=ca_dir,
                             run_as="lepton-no-such-account", gpus=[], timeout=30)
    message = str(e.value)
    assert "\n" not in message and "lepton-no-such-account" in message
    assert account_processes() == []


def test_no_tls_means_no_account_cluster():
    from lepton_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="needs TLS"):
        ManagedCluster.start(resolve_profile("local"), name="plain", run_as=getpass.getuser(), gpus=[])


def test_a_worker_that_refuses_to_start_says_why_in_one_line(ca):
    """A GPU this process believes in but the worker's process cannot find: the worker's own
    reason reaches the caller (not a crash of the process at its shutdown), and nothing stays."""
    from lepton_lab.cluster.gpus import GPU

    ca_dir, security = ca
    profile = resolve_profile({"name": "gpu-here", "sites": [
        {"name": "cloud", "kind": "cloud", "workers": 1, "threads": 1, "memory": "512MiB", "gpus": 1}]})
    believed = GPU(index=0, name="believed", uuid="GPU-00000000-1111-2222-3333-000000000000", memory_total=2**34)
    with pytest.raises(ClusterError) as e:
        ManagedCluster.start(profile, name="nogpu", security=security, ca_dir=ca_dir, run_as=getpass.getuser(),
                             gpus=[believed], timeout=60)
    message = str(e.value)
    assert "\n" not in message and "no GPU found on this machine" in message
    assert "Fatal Python error" not in message and "Python frame" not in message
    assert account_processes() == []
