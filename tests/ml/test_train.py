"""Training on a real 2-worker cluster: XGBoost both ways, PyTorch alone and DDP, killed workers, magics."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits, make_classification, make_regression

import lepton_lab
from lepton_lab.api import train
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ConfigError
from lepton_lab.ml.train import TrainingError, TrainResult
from tests.helpers import checked_cluster

CLUSTER = "train-test"


@pytest.fixture
def cluster(cluster_slot):
    """One 2-worker cluster for the module, checked before each test and rebuilt if damaged."""
    return checked_cluster(cluster_slot, CLUSTER, {"cloud-0", "cloud-1"}, cloud=2, edge=0)


@pytest.fixture(scope="module")
def binary():
    X, y = make_classification(4000, 20, n_informative=8, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype("float32"), y


def mlp(width: int = 64):
    from torch import nn

    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def worker_pids(handle) -> dict[str, int]:
    """Worker name → process id (the nanny's child)."""
    info = workers_now(handle.client)
    return {info[addr]["name"]: pid for addr, pid in handle.client.run(os.getpid).items()}


def wait_for_workers(handle, n: int = 2, timeout: float = 30) -> None:
    """After a kill the nanny restarts the worker; later tests want the full cluster back."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(workers_now(handle.client)) == n:
            return
        time.sleep(0.2)
    raise AssertionError(f"cluster did not get back to {n} workers")


# --------------------------------------------------------------------------- XGBoost


@pytest.mark.parametrize("strategy", ["single", "distributed"])
def test_xgboost_binary_both_strategies(cluster, binary, strategy):
    X, y = binary
    result = train("xgboost", data=(X, y), name=f"bin-{strategy}", rounds=20, strategy=strategy,
                   checkpoint_every=5, progress=False)
    assert isinstance(result, TrainResult) and result.kind == "xgboost" and result.task == "binary"
    assert result.metrics["auc"] >= 0.9 and 0.8 <= result.metrics["accuracy"] <= 1
    assert result.strategy.startswith(f"{strategy}:") and "as asked" in result.strategy
    assert result.model.num_boosted_rounds() == 20
    assert [row["round"] for row in result.history] == list(range(1, 21))
    assert result.resumed_from is None and result.restarts == 0 and result.site == "cloud"
    if strategy == "distributed":
        assert sorted(result.workers) == ["cloud-0", "cloud-1"] and len(result.ranks) == 2
    else:
        assert result.workers[0] in ("cloud-0", "cloud-1") and result.ranks[0]["threads"] >= 1
    files = sorted(p.name for p in Path(result.checkpoints).iterdir())
    assert "latest.json" in files and "xgboost-r000020.ubj" in files  # older ones pruned
    assert len([f for f in files if f.endswith(".ubj")]) == 2
    assert len(result.data_fingerprint) == 64
    assert result.input_schema["shape"] == [4000, 20] and result.input_schema["features"][0] == "f0"
    html = result._repr_html_()
    assert "bin-" in html and "auc" in html and strategy in html


def test_auto_picks_one_worker_for_small_data_and_same_fingerprint(cluster, binary):
    X, y = binary
    a = train("xgboost", data=(X, y), name="auto", rounds=5, progress=False)
    b = train("xgboost", data=X, target=y, name="auto", rounds=5, progress=False)
    assert a.strategy.startswith("single:") and "fits one worker" in a.strategy
    assert a.data_fingerprint == b.data_fingerprint
    c = train("xgboost", data=(X[:-1], y[:-1]), name="auto", rounds=5, progress=False)
    assert c.data_fingerprint != a.data_fingerprint


def test_xgboost_multiclass_digits(cluster, digits):
    X, y = digits
    result = train("xgboost", data=(X, y), name="digits-xgb", rounds=30, progress=False)
    assert result.task == "multiclass" and result.classes == list(range(10))
    assert result.metrics["accuracy"] >= 0.9 and set(result.metrics) == {"accuracy"}
    assert result.model.predict(__import__("xgboost").DMatrix(X[:3])).shape == (3, 10)


def test_xgboost_regression_rmse(cluster):
    X, y = make_regression(3000, 10, noise=5.0, random_state=0)
    result = train("xgboost", data=(X, y), name="reg", rounds=40, progress=False)
    assert result.task == "regression" and set(result.metrics) == {"rmse"}
    assert result.metrics["rmse"] < 0.5 * np.std(y)
    assert "rmse" in result.history[-1]


def test_dataframe_with_text_labels_both_strategies(cluster, binary):
    X, y = binary
    df = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])])
    df["is_fraud"] = np.where(y == 1, "yes", "no")
    for strategy in ("single", "distributed"):
        result = train("xgboost", data=df, target="is_fraud", name="fraud", rounds=15, strategy=strategy,
                       progress=False)
        assert result.classes == ["no", "yes"] and result.metrics["auc"] >= 0.9
        assert result.input_schema["features"][:2] == ["c0", "c1"] and result.input_schema["target"] == "is_fraud"
        assert result.model.feature_names[:2] == ["c0", "c1"]


def test_dask_inputs_stay_distributed(cluster, binary):
    import dask.array as da
    import dask.dataframe as dd

    X, y = binary
    df = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])]).assign(label=y)
    ddf = dd.from_pandas(df, npartitions=4)
    r1 = train("xgboost", data=ddf, target="label", name="dask-df", rounds=15, strategy="distributed",
               progress=False)
    assert r1.metrics["auc"] >= 0.9 and r1.input_schema["shape"] == [4000, 20]
    dX, dy = da.from_array(X, chunks=(1000, 20)), da.from_array(y, chunks=1000)
    r2 = train("xgboost", data=(dX, dy), name="dask-arr", rounds=15, strategy="single", progress=False)
    assert r2.metrics["auc"] >= 0.9 and len(r2.workers) >= 1


def test_dask_fingerprint_builds_its_graph_in_the_callers_thread(cluster, binary, monkeypatch):
    """Two threads building dask-expr graphs over the same frame can hang each other on
    Python 3.11; the fingerprint's graph is built where training builds its own."""
    import dask.dataframe as dd

    from lepton_lab.ml.train.data import _DaskFingerprint, _fingerprint

    X, y = binary
    ddf = dd.from_pandas(pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])]), npartitions=4)
    dy = dd.from_pandas(pd.Series(y, name="label"), npartitions=4)
    threads = []
    for cls in (type(ddf), type(dy)):
        real = cls.to_delayed
        monkeypatch.setattr(cls, "to_delayed", lambda self, *a, _real=real, **k: (
            threads.append(threading.get_ident()), _real(self, *a, **k))[1])
    pending = _DaskFingerprint(cluster.client, b"header", ddf, dy, frame=True)
    assert threads and set(threads) == {threading.get_ident()}
    digest = pending.result()
    assert len(digest) == 64 and digest == _fingerprint(b"header", ddf, dy, True, True)


def test_job_shows_in_allocation_and_progress_streams(cluster):
    X, y = make_classification(30000, 30, random_state=1)
    events: list[dict] = []
    box: dict = {}

    def run():
        box["result"] = train("xgboost", data=(X, y), name="watched", rounds=60, params={"max_depth": 8},
                              strategy="distributed", progress=True, on_progress=events.append)

    t = threading.Thread(target=run)
    t.start()
    seen = None
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline and seen is None:
        snap = lepton_lab.status(CLUSTER)
        job = snap.job("train-watched")
        seen = job if job is not None and job.tasks else None  # listed from submission; wait for it to run
        time.sleep(0.05)
    t.join(120)
    assert seen is not None, "job train-watched never appeared in an allocation snapshot"
    assert seen.sites == ["cloud"] and set(seen.workers) <= {"cloud-0", "cloud-1"}
    result = box["result"]
    rounds = [row["round"] for e in events for row in e["rows"]]
    assert rounds == list(range(1, 61))  # every round's metric arrives, batched a few per second
    assert 2 <= result.progress_events == len(events) <= 60 and events[-1]["round"] == 60
    assert set(events[-1]["metrics"]) == {"auc", "error"} and events[-1]["worker"].startswith("tls://")
    client = cluster.client
    assert len([e for _, e in client.get_events("lepton-train:watched") if e.get("run")]) >= len(events)


# --------------------------------------------------------------------------- PyTorch


def test_torch_single_worker_digits(cluster, digits):
    import torch

    X, y = digits
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train("torch", model=net, data=(X, y), name="digits", epochs=8, batch_size=64, lr=3e-3,
                   progress=False)
    assert result.kind == "torch" and result.metrics["accuracy"] >= 0.9
    assert result.strategy.startswith("single:") and len(result.ranks) == 1
    assert [row["epoch"] for row in result.history] == list(range(1, 9))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the user's model is untouched
    with torch.no_grad():
        pred = result.model(torch.from_numpy(X[:200])).argmax(1).numpy()
    assert (pred == y[:200]).mean() >= 0.9
    # the last epoch, every=10
    assert sorted(p.name for p in Path(result.checkpoints).glob("torch-e*.pt")) == ["torch-e0008.pt"]


def test_torch_ddp_two_workers(cluster, digits):
    from lepton_lab.ml.torch_rank import param_digest as _param_digest

    X, y = digits
    result = train("torch", model=mlp(), data=(X, y), name="digits-ddp", epochs=8, batch_size=64, lr=3e-3,
                   workers=2, progress=False)
    assert result.strategy.startswith("distributed: DistributedDataParallel (gloo) over 2 workers")
    assert sorted(r["worker"] for r in result.ranks) == ["cloud-0", "cloud-1"]  # one rank per worker
    assert [r["rank"] for r in result.ranks] == [0, 1]
    digests = {r["digest"] for r in result.ranks}
    assert len(digests) == 1 and _param_digest(result.model) in digests  # identical on both ranks
    assert result.metrics["accuracy"] >= 0.9


def test_ddp_ranks_run_in_child_processes_that_end_with_the_job(cluster, digits):
    import psutil

    X, y = digits
    before = worker_pids(cluster)
    result = lepton_lab.train("torch", model=mlp(), data=(X, y), name="digits-ddp-procs", epochs=2, workers=2,
                              progress=False)
    pids = [r["pid"] for r in result.ranks]
    assert len(set(pids)) == 2 and not set(pids) & set(before.values())  # not the workers' own processes
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert worker_pids(cluster) == before  # the workers themselves were never restarted


# --------------------------------------------------------------------------- jobs one after another


def _job(kind: str, name: str, binary, digits):
    """One small training of ``kind``; a hang becomes a TrainingError, never a stuck test."""
    bounds = dict(progress=False, stall_timeout=60, timeout=240)
    if kind.startswith("xgboost"):
        X, y = binary
        strategy = "single" if kind == "xgboost-single" else "distributed"
        return lepton_lab.train("xgboost", data=(X, y), name=name, rounds=10, strategy=strategy, **bounds)
    X, y = digits
    return lepton_lab.train("torch", model=mlp(), data=(X, y), name=name, epochs=2, workers=2, **bounds)


@pytest.mark.parametrize("order", [("xgboost", "ddp"), ("ddp", "xgboost"), ("ddp", "ddp"),
                                   ("xgboost-single", "xgboost", "ddp")], ids="-then-".join)
def test_any_order_of_jobs_on_one_cluster(cluster, binary, digits, order):
    for repeat in range(2):
        for i, kind in enumerate(order):
            result = _job(kind, f"order-{i}-{kind}", binary, digits)
            assert result.restarts == 0, (repeat, kind, result.strategy)
            assert set(result.workers) <= {"cloud-0", "cloud-1"}


def test_rank_blocked_in_a_collective_is_named_and_freed(cluster, digits):
    """Rank 1 stops answering mid-epoch, so rank 0 waits inside the gradient all_reduce: the
    watchdog names both ranks, their workers and phases in one line, and frees the workers."""
    from torch import nn

    class HangsOnRank1(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            self.calls = 0

        def forward(self, x):
            import torch.distributed as dist

            self.calls += 1
            if self.calls > 3 and dist.is_initialized() and dist.get_rank() == 1:
                threading.Event().wait()  # never returns
            return self.fc(x)

    X, y = digits
    before = worker_pids(cluster)
    with pytest.raises(TrainingError) as err:
        lepton_lab.train("torch", model=HangsOnRank1(), data=(X, y), name="blocked", epochs=3, workers=2,
                         stall_timeout=15, max_restarts=0, progress=False)
    message = str(err.value)
    assert "\n" not in message and "max_restarts=0" in message, message
    assert "rank 1 on cloud-1 (site cloud)" in message and "rank 0 on cloud-0 (site cloud)" in message, message
    assert "phase 'epoch 1/3, step" in message, message
    # Killing the ranks' processes was enough: the workers run on, and take the next job.
    assert worker_pids(cluster) == before
    assert _job("ddp", "after-blocked", None, digits).restarts == 0


def test_new_jobs_after_a_killed_one(cluster, binary, digits):
    X, y = digits
    killed, on_progress = _killer(cluster, 1, "epoch", victim="cloud-1")
    with pytest.raises(TrainingError):
        lepton_lab.train("torch", model=mlp(128), data=(X, y), name="killed-ddp", epochs=40, workers=2,
                         max_restarts=0, progress=False, on_progress=on_progress)
    assert killed
    wait_for_workers(cluster)
    assert _job("xgboost", "after-kill-xgb", binary, digits).restarts == 0
    assert _job("ddp", "after-kill-ddp", binary, digits).restarts == 0


# --------------------------------------------------------------------------- workers dying


def _killer(handle, after: int, unit: str, victim: str | None = None):
    pids = worker_pids(handle)
    killed: list[tuple[str, int]] = []

    def on_progress(msg):
        if not killed and msg[unit] >= after:
            name = victim or msg["worker_name"]
            killed.append((name, msg[unit]))
            os.kill(pids[name], signal.SIGKILL)

    return killed, on_progress


def test_killed_worker_resumes_xgboost_from_checkpoint(cluster):
    X, y = make_classification(40000, 30, random_state=2)
    killed, on_progress = _killer(cluster, 12, "round")
    start = time.monotonic()
    result = train("xgboost", data=(X, y), name="resilient", rounds=120, params={"max_depth": 8},
                   strategy="single", checkpoint_every=5, progress=False, on_progress=on_progress)
    elapsed = time.monotonic() - start
    assert killed, "training ended before the kill"
    killed_at = killed[0][1]
    assert result.resumed_from is not None and result.restarts == 1
    assert 5 <= result.resumed_from <= killed_at and result.resumed_from % 5 == 0
    assert result.model.num_boosted_rounds() == 120
    assert [row["round"] for row in result.history] == list(range(1, 121))
    assert result.metrics["auc"] >= 0.9 and elapsed < 120
    wait_for_workers(cluster)


def test_killed_rank_resumes_torch_ddp(cluster, digits):
    X, y = digits
    killed, on_progress = _killer(cluster, 3, "epoch", victim="cloud-1")
    result = train("torch", model=mlp(128), data=(X, y), name="resilient-ddp", epochs=12, workers=2,
                   checkpoint_every=2, lr=3e-3, progress=False, on_progress=on_progress)
    assert killed and result.resumed_from in (2, 4) and result.restarts == 1
    assert [row["epoch"] for row in result.history] == list(range(1, 13))
    assert result.metrics["accuracy"] >= 0.9
    wait_for_workers(cluster)


def test_out_of_restarts_is_a_clear_error_not_a_hang(cluster):
    X, y = make_classification(40000, 30, random_state=3)
    killed, on_progress = _killer(cluster, 6, "round")
    start = time.monotonic()
    with pytest.raises(TrainingError) as err:
        train("xgboost", data=(X, y), name="fragile", rounds=400, params={"max_depth": 8}, strategy="single",
              checkpoint_every=5, max_restarts=0, progress=False, on_progress=on_progress)
    assert killed and time.monotonic() - start < 60
    message = str(err.value)
    assert "\n" not in message and "max_restarts=0" in message and "fragile" in message
    wait_for_workers(cluster)


def test_stuck_training_is_stopped_with_a_clear_error(cluster, digits):
    from torch import nn

    class Stuck(nn.Module):  # stands for a collective that never returns
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            time.sleep(4)
            return self.fc(x)

    X, y = digits
    start = time.monotonic()
    with pytest.raises(TrainingError) as err:
        train("torch", model=Stuck(), data=(X[:200], y[:200]), name="stuck", epochs=1, batch_size=200,
              stall_timeout=1.5, max_restarts=0, progress=False)
    message = str(err.value)
    assert "no progress for" in message and "processing" in message and "\n" not in message, message
    assert time.monotonic() - start < 30
    wait_for_workers(cluster)  # the stuck task let go of its worker (or it was restarted)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_config_errors(cluster, binary):
    X, y = binary
    df = pd.DataFrame(X[:, :3], columns=["a", "b", "c"]).assign(label=y)
    cases = [
        (dict(kind="xgboost", data=df, target="nope", name="x"), "not a column"),
        (dict(kind="xgboost", data=(X, y), name="x", site="mars"), "no workers on site 'mars'"),
        (dict(kind="lightgbm", data=(X, y), name="x"), "kind must be one of"),
        (dict(kind="xgboost", data=(X, y), name="x", params="max_depth=3"), "params must be a dict"),
        (dict(kind="xgboost", data=(X, y), name="bad name!"), "name must be"),
        (dict(kind="xgboost", data=(X, y[:10]), name="x"), "rows but the target has"),
        (dict(kind="xgboost", data=X, name="x"), "pass data="),
        (dict(kind="torch", data=(X, y), name="x"), "pass model="),
        (dict(kind="torch", data=(X, y), name="x", model=mlp(), workers=3, site="cloud"), "has 2 worker(s)"),
        # No site named: the planner says which constraint the request breaks.
        (dict(kind="torch", data=(X, y), name="x", model=mlp(), workers=3), "capacity: train takes 3 workers"),
        (dict(kind="xgboost", data=(X, y), name="x", strategy="fastest"), "strategy must be"),
    ]
    for kwargs, text in cases:
        kind = kwargs.pop("kind")
        with pytest.raises(ConfigError) as err:
            train(kind, progress=False, **kwargs)
        assert text in str(err.value) and "\n" not in str(err.value), (kwargs, str(err.value))


def test_failing_training_surfaces_as_one_line_error(cluster, binary):
    X, y = binary
    with pytest.raises(TrainingError) as err:
        train("xgboost", data=(X, y), name="broken", rounds=3, params={"max_depth": -1}, progress=False)
    assert "broken" in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is not None  # the original error stays reachable


# --------------------------------------------------------------------------- %lepton train


@pytest.fixture
def shell(cluster):
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "lepton_lab")
    return sh


def test_magic_trains_xgboost_and_binds_result(shell, binary, capsys):
    X, y = binary
    shell.user_ns["df"] = pd.DataFrame(X, columns=[f"c{i}" for i in range(20)]).assign(is_fraud=y)
    res = shell.run_cell("%lepton train xgboost --data df --target is_fraud --name fraud --site cloud "
                         "--rounds 15 --params '{\"max_depth\": 4}' --strategy single --checkpoint-every 5 "
                         "--no-progress")
    assert res.success, res.error_in_exec
    result = shell.user_ns["fraud"]
    assert isinstance(result, TrainResult) and result.metrics["auc"] >= 0.9
    assert result.model.num_boosted_rounds() == 15
    assert "bound the result to `fraud`" in capsys.readouterr().out


def test_magic_trains_torch_ddp(shell, digits):
    X, y = digits
    shell.user_ns.update(X=X, y=y, net=mlp())
    res = shell.run_cell("%lepton train torch --model net --data X,y --epochs 6 --batch-size 64 --lr 3e-3 "
                         "--workers 2 --name digits_net --site cloud --no-progress")
    assert res.success, res.error_in_exec
    result = shell.user_ns["digits_net"]
    assert len(result.ranks) == 2 and result.metrics["accuracy"] >= 0.85


@pytest.mark.parametrize("line, text", [
    ("%lepton train xgboost --data nothing --target t --name a", "no variable 'nothing'"),
    ("%lepton train xgboost --data df --target nope --name a", "not a column"),
    ("%lepton train xgboost --data df --target is_fraud --name a --params '{max_depth: 3}'", "not valid JSON"),
    ("%lepton train xgboost --data df --target is_fraud --name a --site moon", "no workers on site 'moon'"),
    ("%lepton train torch --data X,y --name a --model nonet", "no variable 'nonet'"),
    ("%lepton train catboost --data df --name a", "invalid choice"),
])
def test_magic_bad_input_is_one_line(shell, binary, line, text, capsys):
    from IPython.core.error import UsageError

    X, y = binary
    shell.user_ns.setdefault("df", pd.DataFrame(X, columns=[f"c{i}" for i in range(20)]).assign(is_fraud=y))
    res = shell.run_cell(line)
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    message = str(res.error_in_exec)
    assert text in message and "\n" not in message.strip(), message
