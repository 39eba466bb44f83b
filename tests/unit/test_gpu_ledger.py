"""The GPU ledger: no device is ever given twice, and a refusal says who holds what."""

import threading

import pytest

from lepton_lab.cluster.gpus import GPU
from lepton_lab.cluster.ledger import GPULedger
from lepton_lab.cluster.profiles import SiteSpec
from lepton_lab.errors import ClusterError, NoGPUError
from tests.fake_gpu import gpu_uuid


def devices(*indices):
    return [GPU(i, f"Fake A100 #{i}", gpu_uuid(i), 40 * 2**30, device=str(i)) for i in indices]


def cloud(gpus, name="cloud", workers=1):
    return SiteSpec(name, "cloud", workers=workers, gpus=gpus)


def test_two_sites_of_one_cluster_get_different_gpus():
    ledger, devs = GPULedger(), devices(4, 5, 6, 7)
    grants = ledger.reserve("c1", "train", "medical", [cloud(2, "cloud-a"), cloud(2, "cloud-b")], devs)
    assert [g.index for g in grants["cloud-a"]] == [4, 5]
    assert [g.index for g in grants["cloud-b"]] == [6, 7]
    assert ledger.free(devs) == []


def test_many_clusters_asking_at_once_never_share_a_device():
    ledger, devs = GPULedger(), devices(*range(8))
    start = threading.Barrier(16)
    got: dict[str, list[str]] = {}
    refused: list[str] = []

    def ask(n):
        start.wait()
        try:
            grant = ledger.reserve(f"c{n}", f"cluster-{n}", "medical", [cloud(1)], devs)
            got[f"c{n}"] = [g.key for g in grant["cloud"]]
        except ClusterError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    keys = [k for ks in got.values() for k in ks]
    assert len(got) == 8 and len(refused) == 8
    assert sorted(keys) == sorted(g.key for g in devs)  # each device once
    assert all("but 0 of 8 are free" in r for r in refused)


def test_refusal_names_free_count_and_same_team_holders_only():
    ledger, devs = GPULedger(), devices(0, 1, 2, 3)
    ledger.reserve("a", "train-a", "medical", [cloud(2)], devs)
    ledger.reserve("b", "fraud", "finance", [cloud(1)], devs)
    with pytest.raises(ClusterError) as e:
        ledger.reserve("c", "train-c", "medical", [cloud(2)], devs)
    msg = str(e.value)
    assert msg == ("cluster train-c: site cloud asks for 2 GPUs but 1 of 4 is free "
                   "(held: 2 by cluster train-a, 1 by other teams); ask for --gpus 1 or stop a cluster that holds some")
    assert "fraud" not in msg and "\n" not in msg
    with pytest.raises(ClusterError, match=r"held: 1 by cluster fraud, 2 by other teams"):
        ledger.reserve("d", "fraud-2", "finance", [cloud(3)], devs)


def test_all_or_nothing_and_release():
    ledger, devs = GPULedger(), devices(0, 1, 2)
    with pytest.raises(ClusterError):
        ledger.reserve("a", "a", "t", [cloud(2, "x"), cloud(2, "y")], devs)
    assert len(ledger.free(devs)) == 3  # the first site's grant was not kept
    grants = ledger.reserve("a", "a", "t", [cloud(2)], devs)
    assert ledger.release("a", [grants["cloud"][0].key]) == 1
    assert ledger.release("other", [grants["cloud"][1].key]) == 0  # not theirs to give back
    assert [g.index for g in ledger.free(devs)] == [0, 2]
    assert ledger.release("a") == 1 and len(ledger.free(devs)) == 3


def test_auto_takes_what_is_free_and_machine_limits_come_first():
    ledger, devs = GPULedger(), devices(0, 1)
    ledger.reserve("a", "a", "t", [cloud(1)], devs)
    assert [g.index for g in ledger.reserve("b", "b", "t", [cloud("auto")], devs)["cloud"]] == [1]
    assert ledger.reserve("c", "c", "t", [cloud("auto")], devs)["cloud"] == []  # CPU workers
    with pytest.raises(NoGPUError, match="asks for 3 GPUs but this machine has 2"):
        ledger.reserve("d", "d", "t", [cloud(3)], devs)
    with pytest.raises(NoGPUError, match="^no GPU found on this machine"):
        ledger.reserve("e", "e", "t", [cloud(1)], [])


def test_take_more_for_a_site():
    ledger, devs = GPULedger(), devices(0, 1, 2)
    ledger.reserve("a", "a", "t", [cloud(1)], devs)
    assert [g.index for g in ledger.take("a", "a", "t", "cloud", None, devs, at_most=1)] == [1]
    assert sorted(ledger.held_by("a", "cloud")) == sorted([gpu_uuid(0), gpu_uuid(1)])
    with pytest.raises(ClusterError, match="asks for 2 GPUs but 1 of 3 is free"):
        ledger.take("a", "a", "t", "cloud", 2, devs)
