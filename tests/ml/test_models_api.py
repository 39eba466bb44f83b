"""publish / load / models / serve / predict, in-process for the local user, and as magics."""

import numpy as np
import pytest
import torch
import xgboost as xgb
from IPython.core.interactiveshell import InteractiveShell
from sklearn.datasets import load_breast_cancer, load_digits

import lepton_lab
from lepton_lab.cluster.workers import workers_now
from lepton_lab.errors import ConfigError, NotFound
from lepton_lab.registry import records_init_kwargs
from tests.helpers import checked_cluster


@records_init_kwargs
class MLP(torch.nn.Module):
    def __init__(self, n_in=64, hidden=32, n_out=10):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def booster():
    X, y = load_breast_cancer(return_X_y=True)
    return xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                     xgb.DMatrix(X, label=y), num_boost_round=8), X


@pytest.fixture
def edge_cluster(cluster_slot):
    """One cloud + one edge worker of team finance (it serves finance's models), checked before each
    test and rebuilt if damaged."""
    return checked_cluster(cluster_slot, "serve-test", {"cloud-0", "edge-0"}, cloud=1, edge=1, team="finance")


def test_publish_load_round_trip(booster):
    model, X = booster
    m1 = lepton_lab.publish(model, "fraud", team="finance", metrics={"auc": 0.99})
    m2 = lepton_lab.publish(model, "fraud", team="finance", alias="production")
    assert (m1["version"], m2["version"]) == (m1["version"], m1["version"] + 1)
    assert m2["metrics"] == {} and m1["metrics"] == {"auc": 0.99}
    assert m2["lineage"]["user"] and m2["lineage"]["created"]
    loaded = lepton_lab.load("fraud@production", team="finance")
    assert np.allclose(loaded.predict(xgb.DMatrix(X[:10])), model.predict(xgb.DMatrix(X[:10])))
    assert loaded.lepton_manifest["version"] == m2["version"]
    names = [m["name"] for m in lepton_lab.models("finance")]
    assert "fraud" in names
    with pytest.raises(NotFound):
        lepton_lab.load("fraud@staging", team="finance")
    # only finance holds a model called fraud: no team needed
    assert lepton_lab.load("fraud").lepton_manifest["version"] == m2["version"]
    with pytest.raises(NotFound):
        lepton_lab.load("no-such-model")


def test_torch_model_with_schema_round_trips():
    net = MLP(hidden=16)
    x = torch.randn(4, 64)
    m = lepton_lab.publish(net, "digits", team="medical", input_schema=x.numpy())
    assert m["input_schema"]["shape"] == [None, 64]
    back = lepton_lab.load("digits", team="medical")
    assert torch.allclose(back(x), net(x))


def test_serve_on_edge_and_predict(booster, edge_cluster):
    model, X = booster
    lepton_lab.publish(model, "fraud-served", team="finance", alias="production")
    served = lepton_lab.serve("fraud-served@production", site="edge", team="finance")
    assert served.workers == ["edge-0"] and served.site == "edge" and served.name == "fraud-served"
    out = lepton_lab.predict("fraud-served", X[:20])
    assert out["rows"] == 20 and np.allclose(out["probabilities"], model.predict(xgb.DMatrix(X[:20])), atol=1e-6)
    assert out["worker"] == "edge-0" and out["round_trip_ms"] > 0 and out["latency_ms"] >= 0
    with pytest.raises(ConfigError, match="features"):
        lepton_lab.predict("fraud-served", X[:2, :5])
    with pytest.raises(ConfigError, match="rows of features"):
        lepton_lab.predict("fraud-served", [["a", "b"]])
    # the deployment lives on the scheduler: another client, with the first one gone, scores with it
    from distributed import Client

    from lepton_lab.ml import deployments

    with Client(edge_cluster.address, security=edge_cluster.client.security, timeout=30) as other:
        assert sorted(deployments.deployments(other)) == ["fraud-served"]
        again = deployments.predict(other, "fraud-served", X[:3])
        assert np.allclose(again["probabilities"], out["probabilities"][:3])
        # the cloud worker received the plugin but keeps nothing of the model
        held = other.run(deployments._loaded_here, "fraud-served")
        names = {a: w["name"] for a, w in workers_now(other).items()}
        assert {names[a]: v for a, v in held.items()} == {"cloud-0": False, "edge-0": True}
    assert [d.name for d in lepton_lab.deployments()] == ["fraud-served"]
    assert lepton_lab.serve_stop("fraud-served") == ["fraud-served"]
    with pytest.raises(NotFound, match="no deployment 'fraud-served'"):
        lepton_lab.predict("fraud-served", X[:2])
    assert lepton_lab.deployments() == []


def test_model_magics(booster, edge_cluster, capsys):
    model, X = booster
    sh = InteractiveShell.instance()
    lepton_lab.load_ipython_extension(sh)  # a fresh registration, whatever earlier tests loaded
    sh.user_ns.update(fraud=model, X=X[:7])
    assert sh.run_cell("%lepton publish fraud --team finance --alias production").success
    out = capsys.readouterr().out
    assert "published finance/fraud version" in out and "as production" in out
    assert sh.run_cell("%lepton load fraud@production --team finance --as back").success
    assert isinstance(sh.user_ns["back"], xgb.Booster)
    assert sh.run_cell("%lepton serve fraud@production --site edge --team finance").success
    assert sh.run_cell("%lepton predict fraud --data X").success
    assert len(sh.user_ns["predictions"]) == 7
    assert sh.run_cell("%lepton serve fraud --stop").success
    r = sh.run_cell("%lepton publish nothing_here --team finance")
    assert "no variable 'nothing_here'" in str(r.error_in_exec)
    r = sh.run_cell("%lepton load fraud@nope --team finance")
    assert "%lepton load" in str(r.error_in_exec)


def test_compress_magic_refuses_beyond_tolerance_then_forces(capsys):
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype("float32")
    net = MLP(hidden=64)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.from_numpy(X[:1400]), torch.from_numpy(y[:1400])
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    sh = InteractiveShell.instance()
    lepton_lab.load_ipython_extension(sh)
    sh.user_ns.update(net=net, digits=(X[:1400], y[:1400], X[1400:], y[1400:]))
    r = sh.run_cell("%lepton compress net --data digits --quantize int8")
    assert r.success, r.error_in_exec
    report = sh.user_ns["net_small"].report
    assert report.size_ratio > 2
    r = sh.run_cell("%lepton compress net --data digits --prune 0.95 --tolerance 0.1")
    assert r.error_in_exec is not None and "tolerance" in str(r.error_in_exec)
    r = sh.run_cell("%lepton compress net --data digits --prune 0.95 --tolerance 0.1 --force --as tiny")
    assert r.success and sh.user_ns["tiny"].report.forced
    # A compressed model is published with its report and loads back as the same network.
    assert sh.run_cell("%lepton publish net_small --team medical").success
    assert "published medical/net-small version" in capsys.readouterr().out
    back = lepton_lab.load("net-small", team="medical")
    assert back.lepton_manifest["compression"]["steps"] == ["int8"]
    with torch.no_grad():
        assert torch.equal(back(xt[:50]), sh.user_ns["net_small"].model(xt[:50]))
