"""Federated search under a privacy budget, on a real cluster of two hospital sites.

Every trial's ε is charged to the dataset's ledger before it runs; the budget set in
the policy stops the search before it is exceeded, and every spend is audited.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

import lepton_lab
from lepton_lab import config
from lepton_lab.errors import ConfigError, PermissionDenied
from lepton_lab.ml.privacy import RDPAccountant
from lepton_lab.registry.modelspec import model_spec
from lepton_lab.security.audit import AuditLog
from lepton_lab.security.identity import server_owner
from lepton_lab.security.policy import load_policy
from lepton_lab.services.privacy import PrivacyLedger
from tests.helpers import checked_cluster

SITES = ["edge-hospital-a", "edge-hospital-b"]
CLUSTER = "tune-fed-test"
PROFILE = {"name": "tune-hospitals", "sites": [
    {"name": s, "kind": "edge", "workers": 1, "threads": 1, "memory": "512MiB"} for s in SITES]}
ROUNDS = 2
NOISE = 1.0

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(cluster_slot):
    return checked_cluster(cluster_slot, CLUSTER, {f"{s}-0" for s in SITES}, profile=PROFILE)


@pytest.fixture(scope="module")
def data():
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0)
    Xtr, Xte = ((Xtr - mean) / std).astype(np.float32), ((Xte - mean) / std).astype(np.float32)
    parts = dict(zip(SITES, np.array_split(np.random.default_rng(0).permutation(len(Xtr)), 2)))

    def load_site(site):
        return Xtr[parts[site]], ytr[parts[site]]

    return load_site, (Xte, yte)


def logreg():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 1))


def _eps(runs: int, delta: float) -> float:
    acc = RDPAccountant()
    acc.step(noise_multiplier=NOISE, sample_rate=1.0, steps=ROUNDS * runs)
    return float(acc.epsilon(delta))


@pytest.fixture
def budget_policy(tmp_path, monkeypatch):
    """A policy where the local user is a medical analyst and the 'wards' data allows 2 trials, not 3."""
    delta = 1e-5
    budget = (_eps(2, delta) + _eps(3, delta)) / 2
    path = tmp_path / "policy.yaml"
    path.write_text(f"version: 1\nteams: [medical]\nmembers:\n  {json.dumps(server_owner())}: {{medical: analyst}}\n"
                    f"privacy:\n  medical: {{epsilon: 100, delta: 1.0e-5}}\n"
                    f"  medical/wards: {{epsilon: {budget!r}, delta: 1.0e-5}}\n")
    monkeypatch.setenv("LEPTON_POLICY", str(path))
    return budget, delta


def _tune(data, **kw):
    loader, eval_data = data
    return lepton_lab.tune("federate", model=logreg(), loader=loader, sites=SITES, eval_data=eval_data,
                           space="lr=float:0.05..0.5:log local_epochs=int:1..2", team="medical",
                           rounds=ROUNDS, noise_multiplier=NOISE, clip=1.0, secure=False, progress=False,
                           **kw)


def test_the_budget_stops_the_search_before_it_is_exceeded(cluster, data, budget_policy):
    budget, delta = budget_policy
    result = _tune(data, study="fed-budget", dataset="wards", trials=5)
    tuning = result.lineage["tuning"]
    assert tuning["ran_now"] == 2 and "refused" in tuning["stopped"]
    assert "2 run(s)" in tuning["stopped"] and "study fed-budget trial" in tuning["stopped"]
    assert tuning["epsilon_total"] == pytest.approx(_eps(2, delta)) and tuning["epsilon_total"] <= budget
    assert tuning["budget"] == pytest.approx(budget) and tuning["study"] == "fed-budget"
    assert result.history[-1].global_metrics["accuracy"] == pytest.approx(tuning["value"])
    # The ledger composed the two trials' RDP curves, and holds nothing for the refused one.
    ledger = PrivacyLedger(load_policy(), home=config.home(), audit=AuditLog())
    total, entries = ledger.spent("medical", "wards")
    assert len(entries) == 2 and total == pytest.approx(_eps(2, delta))
    # Every spend and the refusal are in the audit log.
    lines = [json.loads(x) for x in AuditLog().path.read_text().splitlines()]
    spends = [x for x in lines if x["action"] == "privacy:spend" and x["resource"] == "privacy:medical/wards"]
    assert [x["outcome"] for x in spends][-3:] == ["allow", "allow", "deny"]
    # Asking again is refused at once, in one line that says what was spent and on what.
    with pytest.raises(PermissionDenied) as e:
        _tune(data, study="fed-budget", dataset="wards", trials=6)
    assert "\n" not in str(e.value) and f"{_eps(2, delta):.3f} spent on 2 run(s)" in str(e.value)
    assert len(ledger.spent("medical", "wards")[1]) == 2
    # The best trial publishes with its study, trial and privacy spent in the lineage.
    result.model.lepton_spec = model_spec(result.model)  # a plain chain: the registry rebuilds it from this
    manifest = lepton_lab.publish(result, "fed-tuned", team="medical")
    recorded = manifest["lineage"]["extra"]["tuning"]
    assert recorded["study"] == "fed-budget" and recorded["trial"] == tuning["trial"]
    assert recorded["epsilon_total"] == pytest.approx(tuning["epsilon_total"])


def test_another_dataset_has_its_own_budget(cluster, data, budget_policy):
    result = _tune(data, study="fed-other", dataset="registry", trials=2)
    assert result.lineage["tuning"]["ran_now"] == 2 and result.lineage["tuning"]["budget"] == 100


def test_bad_federated_searches_are_one_line_errors(cluster, data, budget_policy):
    for kw, words in ((dict(study="x", trials=1), "pass dataset="),
                      (dict(study="x", trials=1, dataset="wards", max_depth=3), "unknown option(s) max_depth"),
                      (dict(study="x", trials=1, dataset="bad/name"), "dataset must be")):
        with pytest.raises(ConfigError) as e:
            _tune(data, **kw)
        assert words in str(e.value) and "\n" not in str(e.value)
    loader, eval_data = data
    with pytest.raises(ConfigError) as e:
        lepton_lab.tune("federate", model=logreg(), loader=loader, sites=SITES, eval_data=eval_data,
                        space="max_depth=int:2..4", dataset="wards", team="medical", progress=False)
    assert "max_depth cannot be tuned" in str(e.value)


def test_federated_tune_magic(cluster, data, budget_policy, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    loader, eval_data = data
    sh = InteractiveShell.instance()
    lepton_lab.load_ipython_extension(sh)
    sh.user_ns.update(net=logreg(), load_site=loader, holdout=eval_data)
    ok = sh.run_cell("%lepton tune federate --model net --loader load_site --sites edge-hospital-a,edge-hospital-b "
                     "--eval holdout --dataset magic-wards --team medical --space 'lr=float:0.05..0.5:log' "
                     "--trials 1 --rounds 2 --no-secure --no-progress --study fed-magic --name fed_best")
    assert ok.success, ok.error_in_exec
    out = capsys.readouterr().out
    assert "study fed-magic: best trial #0" in out and "ε spent" in out
    assert sh.user_ns["fed_best"].lineage["tuning"]["study"] == "fed-magic"
    bad = sh.run_cell("%lepton tune federate --space 'lr=float:0.05..0.5' --team medical --dataset wards")
    assert not bad.success and "needs --model" in str(bad.error_in_exec)
