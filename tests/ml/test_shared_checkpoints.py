"""Checkpoints where every worker and the kernel read them: a profile's ``checkpoints:`` path or fsspec URL."""

import os
import signal

import pytest
from sklearn.datasets import make_classification

import lepton_lab
from lepton_lab.cluster.profiles import profile_from_dict
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ConfigError
from lepton_lab.ml.checkpoints import Checkpoints, save_checkpoint


def test_checkpoints_round_trip_through_an_fsspec_url():
    ckpts = Checkpoints("memory://lepton-test/run", every=1)
    ckpts.reset("run-1")
    for step in (1, 2, 3):
        save_checkpoint(ckpts.spec(), "xgboost", step, lambda f, s=step: f.write(b"booster %d " % s * 100), [])
    latest = ckpts.latest()
    assert latest["step"] == 3 and ckpts.read(latest) == b"booster 3 " * 100
    stored = sorted(p.rsplit("/", 1)[-1] for p in ckpts.fs.ls(ckpts.root, detail=False))
    assert stored == ["latest.json", "xgboost-r000002.ubj", "xgboost-r000003.ubj"]
    assert b"booster" not in ckpts.fs.cat_file(latest["path"])
    ckpts.reset("run-2")  # a new run starts clean
    assert ckpts.latest() is None and ckpts.fs.ls(ckpts.root, detail=False) == []


def test_the_profile_setting_is_checked():
    site = {"name": "cloud", "kind": "cloud", "workers": 1}
    assert profile_from_dict("p", {"sites": [site], "checkpoints": "file:///shared/ckpt"}, "p").checkpoints \
        == "file:///shared/ckpt"
    with pytest.raises(ConfigError, match=r"p\.checkpoints: an absolute path or an fsspec URL"):
        profile_from_dict("p", {"sites": [site], "checkpoints": "relative/dir"}, "p")
    with pytest.raises(ConfigError, match="cannot use 'nosuchfs://x'"):
        Checkpoints("nosuchfs://x", every=1)


def test_a_killed_worker_resumes_from_the_shared_directory(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LEPTON_HOME", str(home))
    (home / "profiles.yaml").write_text(
        "profiles:\n  shared-ckpt:\n"
        f"    checkpoints: file://{shared}\n"
        "    sites:\n      - {name: cloud, kind: cloud, workers: 2, threads: 1, memory: 2GiB}\n")
    handle = lepton_lab.up("shared-ckpt", name="shared-ckpt")
    try:
        info = workers_now(handle.client)
        pids = {info[a]["name"]: pid for a, pid in handle.client.run(os.getpid).items()}
        killed: list[tuple[str, int]] = []

        def on_progress(msg):
            if not killed and msg["round"] >= 12:
                killed.append((msg["worker_name"], msg["round"]))
                os.kill(pids[msg["worker_name"]], signal.SIGKILL)

        X, y = make_classification(40000, 30, random_state=2)
        result = lepton_lab.train("xgboost", data=(X, y), name="shared-run", site="cloud", rounds=120,
                                  params={"max_depth": 8}, strategy="single", checkpoint_every=5,
                                  progress=False, on_progress=on_progress)
        assert killed, "training ended before the kill"
        assert result.restarts == 1 and 5 <= result.resumed_from <= killed[0][1]
        assert result.model.num_boosted_rounds() == 120
        # written by the worker that died, in the profile's directory, read back to resume
        assert result.checkpoints == f"{shared}/shared-run"
        assert (shared / "shared-run" / "latest.json").is_file()
        assert not (home / "checkpoints").exists()
    finally:
        lepton_lab.down("shared-ckpt")
