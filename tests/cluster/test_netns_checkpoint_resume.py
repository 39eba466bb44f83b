"""A training worker on another network host is killed; a worker on a third host resumes from the
checkpoint the dead one wrote over SFTP to a fourth host, the profile's ``checkpoints:`` location.

The cluster is started the product's way (``lepton_lab.up`` on a profile whose ``checkpoints:``
is an ``sftp://`` URL on a storage host of this test; TLS, the scheduler listening on this
host's bridge address). Its one site has no local workers: two ``lepton-lab worker`` processes
join it with the cluster's worker certificate from two network namespaces on one bridge
(:mod:`tests.ssh_hosts`); the third namespace is the storage host, its ``sshd`` serving SFTP.
The key to it reaches the workers and the kernel the way fsspec takes settings (the
``FSSPEC_SFTP_KEY_FILENAME`` environment variable, fsspec's config), and the storage host's
own key through ``LEPTON_KNOWN_HOSTS``: a host whose key is not known is refused. Once the training worker
has written a checkpoint, its whole process group (the CLI, its nanny and the worker) is
SIGKILLed; the run must finish on the other host from that checkpoint, and the checkpoint files
must be sealed, not XGBoost models. Namespaces, bridge and processes are put back even on failure.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import psutil
import pytest
import xgboost
from sklearn.datasets import make_classification

import lepton_lab
from lepton_lab.cluster.workers import workers_now
from tests.helpers import dump_stacks, eventually, traceable
from tests.ssh_hosts import RigMissing, ssh_hosts

SITE = "edge-lab"
NAME = "netns-resume"
ROUNDS = 60

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def hosts(tmp_path):
    """Three network namespaces on one bridge with this host: two for workers, one storing checkpoints."""
    try:
        with ssh_hosts(tmp_path / "hosts", count=3) as rig:
            yield {**rig, "hosts": rig["hosts"][:2], "store": rig["hosts"][2]}
    except RigMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def sftp_key(hosts, monkeypatch):
    """The key to the storage host, as fsspec takes settings: its environment variable, and its config here."""
    from fsspec.implementations.sftp import SFTPFileSystem

    monkeypatch.setenv("FSSPEC_SFTP_KEY_FILENAME", hosts["key"])
    monkeypatch.setenv("LEPTON_KNOWN_HOSTS", hosts["known_hosts"])  # the storage host's key, checked
    monkeypatch.setitem(fsspec.config.conf, "sftp", {"key_filename": hosts["key"]})
    yield hosts["key"]
    for fs in list(SFTPFileSystem._cache.values()):  # this process's SSH sessions to the storage host
        fs.client.close()
    SFTPFileSystem.clear_instance_cache()


@pytest.fixture
def cluster(hosts, sftp_key, tmp_path, monkeypatch):
    """A TLS cluster of a profile with checkpoints over SFTP; a worker of SITE joins from each namespace."""
    shared = tmp_path / "store-checkpoints"  # on the storage host (one filesystem here, read back below)
    store = hosts["store"]
    url = f"sftp://{hosts['user']}@{store['ip']}:{store['port']}{shared}"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LEPTON_HOME", str(home))
    monkeypatch.setenv("LEPTON_SCHEDULER_HOST", hosts["host_ip"])
    (home / "profiles.yaml").write_text(
        "profiles:\n  netns-ckpt:\n"
        f"    checkpoints: {url}\n"
        f"    sites:\n      - {{name: {SITE}, kind: edge, workers: 0}}\n")
    handle = lepton_lab.up("netns-ckpt", name="netns-ckpt")
    procs: list[subprocess.Popen] = []
    try:
        assert handle.address.startswith(f"tls://{hosts['host_ip']}:")
        args = lepton_lab.worker_certificate(SITE, tmp_path / "certs")
        for index, host in enumerate(hosts["hosts"]):
            cwd = tmp_path / f"machine-{index}"
            cwd.mkdir()
            with open(cwd / "worker.log", "w") as log:
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", host["ns"], sys.executable, "-m", "lepton_lab.cli", "worker", *args,
                     "--host", host["ip"], "--index", str(index), "--nthreads", "1", "--memory-limit", "1GiB",
                     "--death-timeout", "30"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(cwd), env=traceable()))
        try:
            handle.client.wait_for_workers(2, timeout=90)
        except Exception:
            there = sorted(w["name"] for w in workers_now(handle.client).values())
            for proc in procs:
                dump_stacks(proc.pid)  # each one's stacks end its log
            logs = "\n".join(f"--- machine-{i}:\n" + (tmp_path / f"machine-{i}" / "worker.log").read_text()[-6000:]
                             for i in range(len(procs)))
            pytest.fail(f"the namespaced workers did not join (the scheduler has {there}):\n{logs}")
        yield {"handle": handle, "procs": procs, "shared": shared, "url": url}
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(30)
        lepton_lab.down("netns-ckpt")


def test_an_sftp_host_whose_key_is_not_known_is_refused(hosts, sftp_key, tmp_path, monkeypatch):
    from lepton_lab.errors import ConfigError
    from lepton_lab.ml.checkpoints import location

    store = hosts["store"]
    url = f"sftp://{hosts['user']}@{store['ip']}:{store['port']}{tmp_path / 'ckpt'}"
    lines = Path(hosts["known_hosts"]).read_text().splitlines()
    ours = next(line for line in lines if line.startswith(f"[{store['ip']}]:{store['port']} "))
    other = next(line for line in lines if line != ours)  # another host's key under the store's name
    for text, said in (("", "a key in no known hosts file"),
                       (f"{ours.split()[0]} {' '.join(other.split()[1:])}\n", "a different key than the one known")):
        known = tmp_path / "known_hosts"
        known.write_text(text)
        monkeypatch.setenv("LEPTON_KNOWN_HOSTS", str(known))
        with pytest.raises(ConfigError, match=f"cannot reach .*presented {said}"):
            location(url)
    monkeypatch.setenv("LEPTON_KNOWN_HOSTS", hosts["known_hosts"])
    fs, root = location(url)
    fs.makedirs(root, exist_ok=True)
    assert fs.isdir(root) and (tmp_path / "ckpt").is_dir()


def _latest(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint(directory):
    """``(latest.json, the bytes of the file it names)`` once both are there, else None."""
    latest = _latest(directory / "latest.json")
    try:
        return (latest, (directory / latest["file"]).read_bytes()) if latest else None
    except OSError:  # pruned by a newer checkpoint meanwhile: look again
        return None


def test_a_killed_worker_on_another_host_resumes_from_the_checkpoint_on_a_storage_host(hosts, cluster):
    client = cluster["handle"].client
    workers = workers_now(client)
    host_of = {w["name"]: a for a, w in workers.items()}
    ns_ips = [h["ip"] for h in hosts["hosts"]]
    assert sorted(host_of) == [f"{SITE}-0", f"{SITE}-1"]
    for i, name in enumerate(sorted(host_of)):
        assert host_of[name].startswith(f"tls://{ns_ips[i]}:")  # each on its own host, over TLS
    pids = {workers[a]["name"]: pid for a, pid in client.run(os.getpid).items()}
    group = {f"{SITE}-{i}": proc.pid for i, proc in enumerate(cluster["procs"])}
    shared = cluster["shared"].resolve()
    for local in client.run(lambda dask_worker: dask_worker.local_directory).values():
        local = Path(local).resolve()  # the checkpoints are in no worker's own directory, nor it in them
        assert not local.is_relative_to(shared) and not shared.is_relative_to(local), (local, shared)

    events: list[dict] = []
    X, y = make_classification(20000, 20, n_informative=10, random_state=4)
    ckpt_dir = cluster["shared"] / NAME
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lepton_lab.train, "xgboost", data=(X, y), name=NAME, site=SITE, rounds=ROUNDS,
                              params={"max_depth": 6}, strategy="single", checkpoint_every=2, max_restarts=1,
                              progress=False, on_progress=events.append, timeout=150)
        first = eventually(lambda: running.done() or _checkpoint(ckpt_dir), timeout=120)
        assert isinstance(first, tuple), \
            f"no checkpoint in {ckpt_dir}: {running.exception() if running.done() else 'none written'}"
        written, sealed = first
        trainer = eventually(lambda: events and events[-1]["worker_name"], timeout=30)
        assert trainer in group, events
        # The real processes go: the CLI, its nanny and the training worker (a machine that died).
        assert psutil.Process(pids[trainer]).pid in {p.pid for p in psutil.Process(group[trainer]).children(True)}
        os.killpg(group[trainer], signal.SIGKILL)
        assert eventually(lambda: not psutil.pid_exists(pids[trainer]), timeout=30)
        result = running.result(timeout=180)

    survivor = next(n for n in group if n != trainer)
    reached = max(e["round"] for e in events if e["worker_name"] == trainer)
    assert reached < ROUNDS, "training ended before the kill"
    assert result.restarts == 1
    assert 0 < written["step"] <= result.resumed_from <= reached, (written["step"], result.resumed_from, reached)
    after = [e for e in events if e["worker_name"] == survivor]
    assert after and min(e["round"] for e in after) > result.resumed_from  # it started from the checkpoint
    assert all(e["worker"] == host_of[survivor] for e in after)  # on the other host
    assert result.model.num_boosted_rounds() == ROUNDS and len(result.history) == ROUNDS
    assert result.metrics["accuracy"] > 0.8
    assert result.checkpoints == f"{cluster['url']}/{NAME}"  # the profile's location, not the kernel's home
    assert not (Path(os.environ["LEPTON_HOME"]) / "checkpoints").exists()
    # Sealed on disk: neither the dead worker's checkpoint nor the last one is an XGBoost model.
    final = _latest(ckpt_dir / "latest.json")
    assert final["step"] == ROUNDS
    for data in (sealed, (ckpt_dir / final["file"]).read_bytes()):
        assert b"learner" not in data and b"gbtree" not in data
        with pytest.raises(xgboost.core.XGBoostError):
            xgboost.Booster(model_file=bytearray(data))
