"""Clusters on a fake 8-GPU machine: real worker processes, each given a device no other cluster holds.

Fake GPU workers are ordinary CPU nannies carrying the ``GPU`` resource and
their ``CUDA_VISIBLE_DEVICES``; a fake dask-cuda preload records, in each
worker, the device it would make its CUDA context on.
"""

import os
import subprocess
import sys
import threading
import urllib.request

import pytest
from dask.utils import parse_bytes
from distributed import Client

from lepton_lab.cluster.launcher import ClusterManager
from lepton_lab.cluster.ledger import GPULedger
from lepton_lab.cluster.profiles import Profile, SiteSpec
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ClusterError, QuotaExceeded
from lepton_lab.security.policy import parse_policy_text
from lepton_lab.services import Actor, Services
from tests import fake_gpu


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """8 fake GPUs of which this process may use 4, 5, 6 and 7."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_gpu.fake_nvml(8))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    fake_gpu.install_fake_dask_cuda(tmp_path / "site-packages", monkeypatch)
    return GPULedger()


def gpu_profile(gpus, workers=None, name="gpu"):
    return Profile(name, (SiteSpec("cloud", "cloud", workers=gpus if workers is None else workers,
                                   memory=parse_bytes("512MiB"), gpus=gpus),))


def gpu_view(managed):
    """worker name -> (CUDA_VISIBLE_DEVICES, device of its CUDA context, CPU cores) as the worker sees them."""
    with Client(managed.address, security=managed.security, timeout=30, set_as_default=False) as client:
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("FAKE_CUDA_CONTEXT"),
                                   sorted(os.sched_getaffinity(0))))
        names = {a: w["name"] for a, w in workers_now(client).items()}
    return {names[a]: v for a, v in seen.items()}


def test_two_clusters_asking_at_once_never_share_a_gpu(machine):
    # Two managers, one ledger: what a kernel's session and the server do in one process.
    managers = [ClusterManager(ledger=machine), ClusterManager(ledger=machine)]
    before = fake_gpu.cuda_modules_loaded()
    barrier = threading.Barrier(2)
    started, errors = {}, []

    def start(i):
        barrier.wait()
        try:
            started[i], _ = managers[i].start(gpu_profile(2), name=f"gpu-{'ab'[i]}", team="medical")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    try:
        assert not errors, errors
        views = {i: gpu_view(started[i]) for i in range(2)}
        firsts = {i: sorted(env.split(",")[0] for env, _, _ in v.values()) for i, v in views.items()}
        assert sorted(firsts[0] + firsts[1]) == ["4", "5", "6", "7"]  # every device once
        ncpu = os.cpu_count() or 1
        allowed = os.sched_getaffinity(0)
        for view in views.values():
            for env, context, cores in view.values():
                mine = env.split(",")
                assert len(mine) == 2 and context == mine[0]  # sees only its own cluster's pair
                if int(mine[0]) % ncpu in allowed:
                    assert cores == [int(mine[0]) % ncpu]  # pinned next to its GPU
        assert fake_gpu.cuda_modules_loaded() == before
        assert [c.gpus_held() for c in (started[0], started[1])] == [2, 2]
        with pytest.raises(ClusterError) as refused:
            managers[0].start(gpu_profile(1), name="gpu-c", team="medical")
        assert str(refused.value) == (
            "cluster gpu-c: site cloud asks for 1 GPU but 0 of 4 are free "
            "(held: 2 by cluster gpu-a, 2 by cluster gpu-b); stop a cluster that holds some")
    finally:
        for i, m in enumerate(managers):
            m.stop_all()
    assert len(machine.free(fake_gpu_devices())) == 4


def fake_gpu_devices():
    from lepton_lab.cluster import gpus

    return gpus.discover()


def test_scale_down_and_up_keeps_a_sites_gpus(machine):
    manager = ClusterManager(ledger=machine)
    a, _ = manager.start(gpu_profile(2), name="gpu-a", team="medical")
    try:
        assert sorted(v[0] for v in gpu_view(a).values()) == ["4,5", "5,4"]
        a.scale(0, "cloud")
        assert a.gpus_held() == 0 and len(machine.free(fake_gpu_devices())) == 4
        b, _ = manager.start(gpu_profile(3), name="gpu-b", team="medical")
        with pytest.raises(ClusterError, match=r"asks for 2 GPUs but 1 of 4 is free \(held: 3 by cluster gpu-b\)"):
            a.scale(2, "cloud")
        assert a.site_counts() == {"cloud": 0} and a.gpus_held() == 0  # a refusal takes nothing
        a.scale(1, "cloud")
        (view,) = gpu_view(a).values()
        assert view[0] == "7" and view[1] == "7"
        manager.stop("gpu-b")
        a.scale(2, "cloud")
        view = gpu_view(a)
        assert sorted(view) == ["cloud-0", "cloud-1"] and a.gpus_held() == 2
        assert all(env is not None for env, _, _ in view.values())
        assert [s.gpus for s in a.info().sites] == [2]
    finally:
        manager.stop_all()
    assert len(machine.free(fake_gpu_devices())) == 4


POLICY = """
version: 1
teams: [medical]
members:
  alice: {medical: analyst}
quotas:
  teams:
    medical: {max_gpus: 3, max_workers: 8, max_clusters: 3}
# Tasks of the server's own clusters run as its account: alice may hold a certificate for them.
trusted: [alice]
"""


@pytest.fixture
def services(machine, tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    for var in ("LEPTON_AUDIT", "LEPTON_SCHEDULER_HOST", "LEPTON_SCHEDULER_ADVERTISE"):
        monkeypatch.delenv(var, raising=False)
    s = Services(parse_policy_text(POLICY), home=tmp_path / "home", manager=ClusterManager(ledger=machine))
    yield s
    s.close()


def test_quota_counts_devices_held(services, machine):
    alice = Actor("alice")
    a = services.create_cluster(alice, team="medical", profile="hybrid", name="a", gpus=2,
                                workers={"cloud": 2, "edge": 0}, memory="512MiB")
    assert services.usage(team="medical").gpus == 2 == a.gpus_held()
    with pytest.raises(QuotaExceeded, match="GPU"):
        services.create_cluster(alice, team="medical", profile="hybrid", name="b", gpus=2,
                                workers={"cloud": 2, "edge": 0}, memory="512MiB")
    services.scale_cluster(alice, "a", "cloud", 0)
    assert services.usage(team="medical").gpus == 0 and len(machine.free(fake_gpu_devices())) == 4
    services.stop_cluster(alice, "a")
    assert len(machine.free(fake_gpu_devices())) == 4


def test_advertised_address_is_what_clients_and_joiners_get(services, monkeypatch):
    monkeypatch.setenv("LEPTON_SCHEDULER_HOST", "127.0.0.1")
    monkeypatch.setenv("LEPTON_SCHEDULER_ADVERTISE", "localhost")
    alice = Actor("alice")
    c = services.create_cluster(alice, team="medical", profile="local", name="reach",
                                workers={"cloud": 1, "edge": 0}, memory="512MiB")
    port = c.listen_address.rsplit(":", 1)[1]
    assert c.listen_address == f"tls://127.0.0.1:{port}"
    assert c.info().scheduler_address == f"tls://localhost:{port}"
    # The dashboard has no login: it stays on loopback, and its link says so.
    assert c.dashboard_link.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(c.dashboard_link.replace("/status", "/health"), timeout=30) as r:
        assert r.status == 200
    creds = services.credentials(alice, "reach")
    assert creds["scheduler_address"] == f"tls://localhost:{port}"
    from lepton_lab.security.certs import IssuedCert

    cert = IssuedCert.from_dict({k: creds[k] for k in ("cert_pem", "key_pem", "ca_pem", "role", "common_name",
                                                       "expires")})
    with Client(creds["scheduler_address"], security=cert.security(), timeout=30, set_as_default=False) as client:
        assert client.submit(lambda: 41 + 1, pure=False).result(timeout=60) == 42
    out = subprocess.run([sys.executable, "-m", "lepton_lab.cli", "join-token", "reach", "--site", "edge-x"],
                         capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(c.id + ".")
    assert f"scheduler: tls://localhost:{port}" in out.stderr
    assert "reachable from this machine only" in out.stderr
    joined = services.redeem_join(out.stdout.strip(), ("127.0.0.1",))
    assert joined["scheduler_address"] == f"tls://localhost:{port}"


def test_bad_scheduler_settings_are_one_line_errors(services, monkeypatch):
    monkeypatch.setenv("LEPTON_SCHEDULER_ADVERTISE", "not a host")
    with pytest.raises(Exception) as e:
        services.create_cluster(Actor("alice"), team="medical", profile="local", name="bad",
                                workers={"cloud": 1, "edge": 0}, memory="512MiB")
    assert str(e.value).startswith("LEPTON_SCHEDULER_ADVERTISE: a host name or IP") and "\n" not in str(e.value)
    assert services.manager.list() == []
