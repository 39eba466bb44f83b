"""Real LocalClusters of cloud and edge workers, started through the public API."""

import os
import socket
import sys
import time

import psutil
import pytest

import lepton_lab
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ClusterError, ConfigError, NoGPUError, NotFound
from tests.fake_gpu import cuda_modules_loaded, install_fake_dask_cuda
from tests.helpers import dask_children, fake_nvml

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture(scope="module")
def cluster():
    handle = lepton_lab.up(name="launcher-test")
    yield handle
    lepton_lab.down(handle.name)


def worker_names(client):
    return sorted(w["name"] for w in workers_now(client).values())


def test_local_profile_has_two_cloud_and_two_edge_workers(cluster):
    workers = workers_now(cluster.client).values()
    by_name = {w["name"]: w for w in workers}
    assert sorted(by_name) == ["cloud-0", "cloud-1", "edge-0", "edge-1"]
    assert by_name["edge-0"]["resources"] == {"edge": 1}
    assert by_name["cloud-1"]["resources"] == {"cloud": 1}
    pids = cluster.client.run(os.getpid)
    assert len(set(pids.values())) == 4 and os.getpid() not in pids.values()  # separate processes


def test_work_is_placed_by_site(cluster):
    where = cluster.client.map(lambda i: __import__("distributed").get_worker().name, range(8),
                               resources=lepton_lab.on_site("edge"), pure=False)
    assert {n.split("-")[0] for n in cluster.client.gather(where)} == {"edge"}
    one = cluster.client.submit(lambda: __import__("distributed").get_worker().name,
                                resources=lepton_lab.on_site("cloud"), pure=False)
    assert one.result().startswith("cloud-")


def test_kernel_environment_is_left_as_found(cluster):
    # Workers get one thread per BLAS/OpenMP pool ...
    worker_env = cluster.client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert set(worker_env.values()) == {"1"}
    # ... but the kernel's own environment is untouched, even after more workers spawn.
    before = dict(os.environ)
    cluster.scale(3, "edge")
    cluster.scale(2, "edge")
    assert dict(os.environ) == before
    for var in THREAD_VARS:
        assert os.environ.get(var) == before.get(var)


def test_fresh_bring_up_leaves_environment(monkeypatch):
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)
    lepton_lab.up(name="env-check", cloud=1, edge=0)
    try:
        assert dict(os.environ) == before
    finally:
        lepton_lab.down("env-check")


def test_same_name_reuses_running_cluster(cluster):
    again = lepton_lab.up(name="launcher-test")
    assert again.address == cluster.address
    assert again is cluster


def test_scale_a_site(cluster):
    cluster.scale(3, "edge")
    assert worker_names(cluster.client) == ["cloud-0", "cloud-1", "edge-0", "edge-1", "edge-2"]
    cluster.scale(1, site="edge")
    assert worker_names(cluster.client) == ["cloud-0", "cloud-1", "edge-0"]
    assert [s["workers"] for s in cluster.info["sites"]] == [2, 1]
    cluster.scale(2, "edge")
    with pytest.raises(ConfigError, match="no site 'fog'"):
        cluster.scale(1, "fog")
    with pytest.raises(ConfigError, match="whole number"):
        cluster.scale(-1, "edge")


def test_the_dask_cluster_holds_workers_by_site_and_refuses_a_scale_without_one(cluster):
    from distributed import SpecCluster

    from lepton_lab.session import session

    dask_cluster = session().transport.managed(cluster.id).cluster
    assert isinstance(dask_cluster, SpecCluster)
    assert dask_cluster.workers_of("edge") == ["edge-0", "edge-1"]
    # Dask's own scale(n) has no site to grow: refused in one line, the spec unchanged.
    with pytest.raises(ClusterError, match="grows by site: scale\\(n, site=...\\)"):
        dask_cluster.scale(9)
    assert sorted(dask_cluster.worker_spec) == ["cloud-0", "cloud-1", "edge-0", "edge-1"]
    assert worker_names(cluster.client) == ["cloud-0", "cloud-1", "edge-0", "edge-1"]


def test_named_sites_of_hybrid_profile():
    handle = lepton_lab.up("hybrid", name="hybrid-test", memory="512MiB")
    try:
        names = worker_names(handle.client)
        assert names == ["cloud-0", "edge-branch-b-0", "edge-hospital-a-0"]
        res = {w["name"]: w["resources"] for w in workers_now(handle.client).values()}
        assert res["edge-hospital-a-0"] == {"edge": 1, "edge-hospital-a": 1}
        f = handle.client.submit(lambda: __import__("distributed").get_worker().name,
                                 resources=lepton_lab.on_site("edge-hospital-a"), pure=False)
        assert f.result() == "edge-hospital-a-0"
        assert handle.info["cost_per_hour"] == pytest.approx(2.48 + 0.12 + 0.12)
        handle.scale(2, "edge")  # a kind scales every site of that kind
        assert len(worker_names(handle.client)) == 5
    finally:
        lepton_lab.down("hybrid-test")


def test_gpus_on_cpu_machine_is_refused_before_anything_starts():
    before = {p.pid for p in dask_children()}
    with pytest.raises(NoGPUError, match="^no GPU found on this machine"):
        lepton_lab.up(name="gpu-test", gpus=1)
    assert {p.pid for p in dask_children()} <= before
    with pytest.raises(NotFound):
        lepton_lab.current("gpu-test")


def test_fake_gpus_start_real_workers_pinned_to_their_gpu(monkeypatch, tmp_path):
    """The GPU path end to end on a CPU: fake NVML + dask-cuda's preload, real worker processes."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(2))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    install_fake_dask_cuda(tmp_path, monkeypatch)
    before = cuda_modules_loaded()
    handle = lepton_lab.up("hybrid", name="fake-gpu", edge=0, memory="512MiB")
    try:
        env = handle.client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        context = handle.client.run(lambda: os.environ.get("FAKE_CUDA_CONTEXT"))
        by_name = {w["name"]: w for w in workers_now(handle.client).values()}
        assert sorted(by_name) == ["cloud-0", "cloud-1"]
        assert {by_name[n]["resources"]["GPU"] for n in by_name} == {1}
        assert sorted(env.values()) == ["0,1", "1,0"]
        # Each worker made its CUDA context itself, on its own GPU; this process imported nothing of CUDA.
        assert sorted(context.values()) == ["0", "1"]
        assert cuda_modules_loaded() == before
        assert [s["gpus"] for s in handle.info["sites"] if s["kind"] == "cloud"] == [2]
        assert os.environ.get("CUDA_VISIBLE_DEVICES") is None
    finally:
        lepton_lab.down("fake-gpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_unreachable_fails_fast_with_one_line():
    t = time.monotonic()
    with pytest.raises(ClusterError) as e:
        lepton_lab.connect(f"tcp://127.0.0.1:{_free_port()}", timeout=1)
    assert time.monotonic() - t < 5
    assert "could not reach a Dask scheduler" in str(e.value) and "\n" not in str(e.value)


def test_connect_default_timeout_is_five_seconds():
    t = time.monotonic()
    with pytest.raises(ClusterError, match="within 5 s"):
        lepton_lab.connect(f"tcp://127.0.0.1:{_free_port()}")
    assert time.monotonic() - t < 9


def test_connect_bad_address():
    with pytest.raises(ConfigError, match="not a scheduler address"):
        lepton_lab.connect("nonsense")


def test_connect_adopts_and_down_only_disconnects(cluster):
    # Clusters the services start speak TLS, with or without a Jupyter server.
    assert cluster.address.startswith("tls://")
    with pytest.raises(ConfigError, match="speaks TLS: pass security="):
        lepton_lab.connect(cluster.address, name="adopted")
    adopted = lepton_lab.connect(cluster.address, name="adopted", security=cluster.client.security)
    assert adopted.adopted
    assert {s["name"]: s["workers"] for s in adopted.info["sites"]} == {"cloud": 2, "edge": 2}
    lepton_lab.down("adopted")
    assert cluster.client.submit(lambda: 1, pure=False).result() == 1  # still running
    with pytest.raises(ClusterError, match="adopted"):
        adopted.scale(1)


def test_down_leaves_no_process():
    handle = lepton_lab.up(name="short-lived", cloud=1, edge=1)
    pids = {p.pid for p in psutil.Process().children(recursive=True)}
    nannies = set(handle.client.run(os.getpid).values())
    assert nannies <= pids
    lepton_lab.down("short-lived")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in nannies):
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in nannies)
    with pytest.raises(NotFound):
        lepton_lab.current("short-lived")
