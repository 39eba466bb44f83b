"""A federated run where one hospital is a separate network host, and its link is cut mid-round.

The scheduler (TLS, certificates from a per-test ``ClusterCA``), the client and the
hospitals a and b run on this host at 127.x.0.1; hospital c is a ``lepton-lab worker``
started *inside* a network namespace at 127.x.0.2, joined over TLS through a veth pair.
While hospital c trains in round 3 the veth goes down: the round must finish with the
other two sites, the global model must stay sane and the result must name the site that
dropped. Namespace, veth and ``route_localnet`` are put back in teardown, even on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

import lepton_lab
from lepton_lab.cluster.launcher import ManagedCluster
from lepton_lab.cluster.profiles import profile_from_dict
from lepton_lab.cluster.workers import workers_now
from lepton_lab.ml.federated import federate, get_vector
from lepton_lab.security.certs import ClusterCA
from tests.helpers import netns_host, sh

SITES = ["edge-hospital-a", "edge-hospital-b", "edge-hospital-c"]
REMOTE = "edge-hospital-c"

pytestmark = pytest.mark.timeout(170)



# -- the second host --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def netns():
    """A namespace joined to this host by a veth pair, both ends in 127/8 with route_localnet on."""
    with netns_host("fed", seed=0, third_octet=0) as host:
        yield host


@pytest.fixture(scope="module")
def tls_cluster(netns, tmp_path_factory):
    """TLS scheduler + hospitals a, b on this host; hospital c joins from inside the namespace."""
    tmp = tmp_path_factory.mktemp("fedtls")
    ca = ClusterCA.create("fed-netns", tmp / "ca")
    hosts = ("127.0.0.1", "localhost", netns["host_ip"])
    security = ca.security("scheduler", "worker", "client", hosts=hosts)
    profile = profile_from_dict("fed-netns", {"sites": [
        {"name": "cloud", "kind": "cloud", "workers": 1, "memory": "512MiB"},
        {"name": "edge-hospital-a", "kind": "edge", "workers": 1, "memory": "512MiB"},
        {"name": "edge-hospital-b", "kind": "edge", "workers": 1, "memory": "512MiB"},
    ]}, "test")
    managed = ManagedCluster.start(profile, name="fed-netns", security=security, host=netns["host_ip"])
    proc = None
    try:
        issued = ca.issue(f"{REMOTE}-worker", "worker", hosts=(netns["ns_ip"],), site=REMOTE)
        cert, key = tmp / "remote.crt", tmp / "remote.key"
        for path, text in ((cert, issued.cert_pem), (key, issued.key_pem)):
            path.write_text(text)
            path.chmod(0o600)
        log = open(tmp / "remote-worker.log", "w")
        proc = subprocess.Popen(
            [netns["ip"], "netns", "exec", netns["ns"], sys.executable, "-m", "lepton_lab.cli", "worker",
             "--scheduler", managed.address, "--site", REMOTE, "--host", netns["ns_ip"], "--index", "0",
             "--memory-limit", "512MiB", "--death-timeout", "30", "--tls-ca-file", str(ca.ca_file),
             "--tls-cert", str(cert), "--tls-key", str(key)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd(),
        )
        handle = lepton_lab.connect(managed.address, name="fed-netns-client",
                                    security=ca.security("client", hosts=hosts), timeout=10)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            names = {w["name"] for w in workers_now(handle.client).values()}
            if f"{REMOTE}-0" in names:
                break
            assert proc.poll() is None, (tmp / "remote-worker.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the namespaced worker did not join within 60 s:\n"
                        + (tmp / "remote-worker.log").read_text()[-3000:])
        yield {"handle": handle, "managed": managed, "proc": proc, "log": tmp / "remote-worker.log"}
        lepton_lab.down("fed-netns-client")
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its link is cut: no clean goodbye to wait for
            except ProcessLookupError:
                pass
            proc.wait(15)
        managed.close()


# -- the run ------------------------------------------------------------------------------------


def test_link_cut_mid_round_finishes_with_the_other_sites(netns, tls_cluster):
    client = tls_cluster["handle"].client
    assert client.scheduler.address.startswith("tls://")
    workers = workers_now(client)
    remote_addr = next(a for a, w in workers.items() if w["name"] == f"{REMOTE}-0")
    assert remote_addr.startswith(f"tls://{netns['ns_ip']}:")  # a different host, over TLS

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0)
    Xtr, Xte = ((Xtr - mean) / std).astype(np.float32), ((Xte - mean) / std).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(Xtr))
    parts = dict(zip(SITES, np.split(perm, [int(0.5 * len(perm)), int(0.8 * len(perm))])))

    def load_site(site):
        idx = parts[site]
        return Xtr[idx], ytr[idx]

    placement: dict[str, list[str]] = {}
    cut = {"at": None, "round": None}
    finished = threading.Event()

    def cut_when_remote_trains():
        # From round 3 on, wait until hospital c is executing a training task, then pull the cable.
        try:
            while not finished.is_set():
                busy = client.processing(workers=[remote_addr]).get(remote_addr, [])
                rounds = [int(str(k).split(f"-round-netns-{REMOTE}-")[1].split("-")[0])
                          for k in busy if f"-round-netns-{REMOTE}-" in str(k)]
                if rounds and max(rounds) >= 3:
                    # The namespace's end goes down: packets to it vanish, nobody is told (a cut cable).
                    sh(netns["ip"], "netns", "exec", netns["ns"], netns["ip"], "link", "set", netns["inside"], "down")
                    cut.update(at=time.monotonic(), round=max(rounds))
                    return
                time.sleep(0.003)
        finally:
            if cut["at"] is None:
                finished.set()

    cutter = threading.Thread(target=cut_when_remote_trains, daemon=True)

    def on_round(record):
        if record.round == 1:
            def holders(dask_scheduler):
                return {str(k): sorted(ws.name for ws in ts.who_has or ())
                        for k, ts in dask_scheduler.tasks.items() if str(k).startswith("federated-data-")}

            placement.update(client.run_on_scheduler(holders))
        if record.round == 2:
            cutter.start()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 1))
    t0 = time.perf_counter()
    try:
        # 40 local epochs: hospital c trains for a noticeable while, so the cut lands mid-task.
        result = federate(model, loader=load_site, sites=SITES, rounds=6, local_epochs=40, batch_size=16,
                          lr=0.02, secure=True, eval_data=(Xte, yte), client=client, round_timeout=8,
                          progress=False, name="netns", on_round=on_round)
    finally:
        finished.set()
        cutter.join(10)
    seconds = time.perf_counter() - t0

    # Hospital c's data was loaded and kept on the namespaced host.
    remote_keys = [k for k in placement if f"-{REMOTE}-" in k]
    assert len(remote_keys) == 1 and placement[remote_keys[0]] == [f"{REMOTE}-0"]
    assert {s["site"]: s["worker"] for s in result.lineage["sites"]}[REMOTE] == f"{REMOTE}-0"

    assert cut["at"] is not None, "hospital c was never seen training after round 2: the link was not cut"
    k = cut["round"]
    early = result.history[:k - 1]
    assert all(r.aggregated == SITES and not r.dropped for r in early), [r.to_dict() for r in early]
    rec = result.history[k - 1]
    assert REMOTE in rec.dropped, [r.to_dict() for r in result.history]
    # The round finished with the other two (or, if c's masked input had just arrived, with
    # c's update rebuilt from the others' shares); either way it was not skipped.
    assert rec.skipped is None and {"edge-hospital-a", "edge-hospital-b"} <= set(rec.aggregated)
    for later in result.history[k:]:
        assert later.aggregated == ["edge-hospital-a", "edge-hospital-b"] and later.skipped is None
    assert REMOTE in result.dropped_sites[k]
    lineage = {s["site"]: s for s in result.lineage["sites"]}
    assert k in lineage[REMOTE]["dropped_in"]
    # Never a partial or corrupt global model.
    weights = get_vector(result.model)
    assert np.all(np.isfinite(weights)) and np.abs(weights).max() < 100
    with torch.no_grad():
        acc = float(((result.model(torch.as_tensor(Xte)).reshape(-1) > 0).numpy() == yte).mean())
    assert acc >= 0.9 and acc == pytest.approx(result.history[-1].global_metrics["accuracy"], abs=1e-6)
    assert seconds < 90, seconds
