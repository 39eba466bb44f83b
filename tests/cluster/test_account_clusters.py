"""Clusters whose scheduler and workers are processes of their owner's account.

Here the owner is the account running the tests (no sudo is needed for it); the
team deployment's test runs them under other Linux accounts through sudo.
"""

import getpass
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from distributed import Client

from lepton_lab.cluster import accounts
from lepton_lab.cluster.launcher import ManagedCluster
from lepton_lab.cluster.profiles import resolve_profile
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ClusterError
from lepton_lab.security.certs import ClusterCA
from tests.helpers import eventually


def account_processes() -> list[psutil.Process]:
    """This process's account processes that run a scheduler or worker (not one kept ready)."""
    found = []
    spare = accounts.SPARES.ready(accounts.this_account())
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid != spare and accounts.ENTRY in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


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
            names = sorted(w["name"] for w in workers_now(client).values())
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


def _temporary_directory():
    """Where Dask's scratch goes in the process that runs it (by value: the workers cannot import tests)."""
    return lambda: str(__import__("dask").config.get("temporary-directory"))


def _environ(*names):
    return lambda: {n: __import__("os").environ.get(n) for n in names}


def _apart(ca, name: str, workers: int) -> ManagedCluster:
    ca_dir, security = ca
    profile = resolve_profile({"name": name, "sites": [
        {"name": "cloud", "kind": "cloud", "workers": workers, "threads": 1, "memory": "512MiB"}]})
    return ManagedCluster.start(profile, name=name, security=security, ca_dir=ca_dir, out_of_process=True, gpus=[])


def test_a_process_kept_ready_becomes_the_next_scheduler_with_its_own_settings(ca):
    """The process kept ready loaded Dask before its order: it runs the next cluster's
    scheduler, and the settings its order brings (the private scratch directory) are in force."""
    security = ca[1]
    me = accounts.this_account()
    accounts.SPARES.keep(me)
    try:
        assert accounts.SPARES.ready(me) is None  # none until a cluster needs one
        first = _apart(ca, "first", 0)
        try:
            ready = accounts.SPARES.ready(me)
            assert ready is not None
            second = _apart(ca, "second", 1)
            try:
                with Client(second.address, security=security, timeout=10) as client:
                    assert client.run_on_scheduler(os.getpid) == ready
                    assert "/lepton-scheduler-" in client.run_on_scheduler(_temporary_directory())
                    assert all("/lepton-worker-" in d for d in client.run(_temporary_directory()).values())
                kept = accounts.SPARES.ready(me)
                assert kept not in (None, ready) and not gone(kept)
            finally:
                second.close()
        finally:
            first.close()
    finally:
        accounts.SPARES.release(me)
    assert eventually(lambda: gone(kept), 30), "the process kept ready did not leave once released"
    assert account_processes() == []


def test_a_process_kept_ready_runs_with_the_environment_as_it_is_at_its_order(ca, monkeypatch):
    security = ca[1]
    me = accounts.this_account()
    monkeypatch.setenv("LEPTON_TEST_GONE", "before")
    accounts.SPARES.keep(me)
    try:
        first = _apart(ca, "first", 0)
        first.close()
        ready = accounts.SPARES.ready(me)
        monkeypatch.setenv("LEPTON_TEST_MARK", "after")
        monkeypatch.delenv("LEPTON_TEST_GONE")
        cluster = _apart(ca, "env", 0)
        try:
            with Client(cluster.address, security=security, timeout=10) as client:
                assert client.run_on_scheduler(os.getpid) == ready
                seen = client.run_on_scheduler(_environ("LEPTON_TEST_MARK", "LEPTON_TEST_GONE"))
                assert seen == {"LEPTON_TEST_MARK": "after", "LEPTON_TEST_GONE": None}
        finally:
            cluster.close()

        # What the interpreter reads as it starts cannot change later: a fresh process, not the one kept.
        stale = accounts.SPARES.ready(me)
        set_before = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        if set_before:
            monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
        else:
            monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
        cluster = _apart(ca, "fresh", 0)
        try:
            with Client(cluster.address, security=security, timeout=10) as client:
                assert client.run_on_scheduler(os.getpid) != stale
                dont_write = client.run_on_scheduler(lambda: __import__("sys").dont_write_bytecode)
                assert dont_write is not set_before
        finally:
            cluster.close()
        assert eventually(lambda: gone(stale), 30)
    finally:
        accounts.SPARES.release(me)


def test_a_process_whose_input_closes_before_any_order_ends_quietly():
    done = subprocess.run([sys.executable, "-m", accounts.ENTRY], input=b"", capture_output=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


LOADED = ("import sys\nfrom lepton_lab.hub import account_process\ncode = account_process.main()\n"
          "print('distributed.dashboard.scheduler' in sys.modules, code, flush=True)\n")
BAD_ORDER = b'{"role": "neither"}\n'


def test_a_process_started_for_a_waiting_order_loads_only_what_its_role_needs():
    done = subprocess.run([sys.executable, "-c", LOADED], input=BAD_ORDER, capture_output=True, timeout=120)
    assert done.stdout.split() == [b"False", b"2"], done.stderr


def test_a_process_kept_ready_loads_both_roles_before_its_order():
    child = subprocess.Popen([sys.executable, "-c", LOADED], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        wchan = Path(f"/proc/{child.pid}/wchan")
        # blocked reading its input: past the loading done while no order waits
        assert eventually(lambda: "pipe_read" in wchan.read_text(), 120)
        out, err = child.communicate(BAD_ORDER, timeout=120)
    finally:
        child.kill()
        child.wait()
    assert out.split() == [b"True", b"2"], err
