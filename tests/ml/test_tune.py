"""Hyper-parameter search on a real 2-worker cluster: search, pruning, resume, publish, refusals, magic."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import xgboost as xgb
from IPython.core.interactiveshell import InteractiveShell
from sklearn.datasets import load_digits, make_classification, make_regression

import lepton_lab
from lepton_lab import config
from lepton_lab.errors import ConfigError, NotFound, PermissionDenied
from lepton_lab.ml.search_space import describe, grid_of, parse_space
from lepton_lab.ml.train import TrainingError, TrainResult
from lepton_lab.ml.tune import make_pruner
from lepton_lab.ml.tune_view import StudyView
from lepton_lab.security.audit import AuditLog
from lepton_lab.security.policy import default_policy, parse_policy_text
from lepton_lab.services import Actor, Services
from lepton_lab.services.studies import StudyStore
from tests.helpers import checked_cluster

CLUSTER = "tune-test"
SPACE = "max_depth=int:1..6 eta=float:0.001..0.5:log"


@pytest.fixture
def cluster(cluster_slot):
    """One 2-worker cluster for the module, checked before each test and rebuilt if damaged."""
    return checked_cluster(cluster_slot, CLUSTER, {"cloud-0", "cloud-1"}, cloud=2, edge=0)


@pytest.fixture(scope="module")
def binary():
    return make_classification(3000, 20, n_informative=6, random_state=0)


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text
    return text


# --------------------------------------------------------------------------- search spaces (no cluster)


def test_search_space_text_and_dict():
    text = "max_depth=int:2..8 eta=float:0.01..0.3:log booster=cat:gbtree,dart sub=float:0.5..1:step=0.25"
    space = parse_space(text)
    assert describe(space) == text
    assert parse_space(describe(space)) == space
    grid = grid_of({k: v for k, v in space.items() if k != "eta"})
    assert grid == {"max_depth": list(range(2, 9)), "booster": ["gbtree", "dart"], "sub": [0.5, 0.75, 1.0]}
    same = parse_space({"max_depth": (2, 8), "eta": "float:0.01..0.3:log", "booster": ["gbtree", "dart"]})
    assert same["max_depth"] == space["max_depth"] and same["booster"] == space["booster"]
    assert type(make_pruner("hyperband", 50)).__name__ == "HyperbandPruner"
    assert type(make_pruner("halving", 50)).__name__ == "SuccessiveHalvingPruner"


@pytest.mark.parametrize("text, words", [
    ("max_depth=int:8..2", "above high"),
    ("max_depth", "not name=kind:range"),
    ("max_depth=long:1..3", "kind must be int, float or cat"),
    ("eta=float:0..1:log", "log range needs low > 0"),
    ("eta=float:0.1..x", "not a number"),
    ("d=int:1.5..3", "whole numbers"),
    ("a=int:1..2 a=int:1..3", "twice"),
    ("", "empty"),
])
def test_bad_spaces_are_one_line_errors(text, words):
    with pytest.raises(ConfigError) as e:
        parse_space(text)
    assert words in _one_line(e)


def test_grid_needs_a_finite_space():
    with pytest.raises(ConfigError) as e:
        grid_of(parse_space("eta=float:0.01..0.3"))
    assert "step" in _one_line(e)


# --------------------------------------------------------------------------- on the cluster


def test_search_beats_the_worst_and_publishes_with_lineage(cluster, binary):
    X, y = binary
    result = lepton_lab.tune("xgboost", data=(X, y), space=SPACE, study="quality", team="finance", trials=8,
                             rounds=30, site="cloud", progress=False, view=False)
    assert isinstance(result, TrainResult) and isinstance(result.model, xgb.Booster)
    assert result.study_name == "quality" and result.team == "finance"
    assert result.n_complete + result.n_pruned == 8 and result.ran_now == 8
    rows = result.trials()
    values = [r["value"] for r in rows if r["state"] == "complete"]
    assert result.value == max(values) > min(values)
    assert result.metrics["auc"] == pytest.approx(result.value)
    assert {r["worker"] for r in rows} == {"cloud-0", "cloud-1"}  # one trial per worker, both used
    assert set(result.params) == {"max_depth", "eta"}
    # The study lives under the team's state in LEPTON_HOME.
    assert (config.home() / "studies" / "finance" / "quality.log").is_file()
    # The best trial is a training result that compress and publish take.
    small = lepton_lab.compress(result, trees=10, data=(X[:500], y[:500]), force=True)
    assert small.model.num_boosted_rounds() == 10
    manifest = lepton_lab.publish(result, "tuned-fraud", team="finance")
    tuning = manifest["lineage"]["extra"]["tuning"]
    assert tuning["study"] == "quality" and tuning["trial"] == result.trial and tuning["team"] == "finance"
    assert tuning["params"] == result.params
    assert manifest["metrics"]["auc"] == pytest.approx(result.value)
    back = lepton_lab.load("tuned-fraud", team="finance")
    assert back.lepton_manifest["lineage"]["extra"]["tuning"]["study"] == "quality"


def test_pruning_stops_bad_trials_early(cluster):
    X, y = make_regression(4000, 20, n_informative=10, noise=5.0, random_state=1)
    rounds = 300
    result = lepton_lab.tune("xgboost", data=(X, y), space="eta=float:0.00001..0.5:log max_depth=int:2..4",
                             study="pruning", team="finance", trials=12, rounds=rounds, sampler="random", site="cloud",
                             pruner="median", progress=False, view=False)
    assert result.metric == "rmse" and result.direction == "minimize"
    pruned = [r for r in result.trials() if r["state"] == "pruned"]
    assert pruned, "the median pruner pruned no trial"
    # Stopped on its worker before the last round, not only marked afterwards.
    assert any(r["steps"] < rounds for r in pruned)
    assert result.params["eta"] > 1e-3  # a learning rate this small cannot get far in 300 rounds


def test_resume_continues_a_stored_study(cluster, binary):
    X, y = binary
    kw = dict(data=(X, y), space=SPACE, study="resumed", team="finance", rounds=20, site="cloud", progress=False,
              view=False)
    first = lepton_lab.tune("xgboost", trials=3, **kw)
    assert first.n_complete + first.n_pruned == 3
    # A kernel that died mid-trial leaves a running trial in the journal.
    store = StudyStore(default_policy("me"), home=config.home(), audit=AuditLog())
    study = store.open(Actor("me"), "finance", "resumed", direction="maximize")
    study.enqueue_trial({"max_depth": 5, "eta": 0.2})
    stale = study.ask(parse_space(SPACE))
    assert stale.params == {"max_depth": 5, "eta": 0.2}
    again = lepton_lab.tune("xgboost", trials=5, **kw)
    assert again.ran_now == 2 and again.n_complete + again.n_pruned == 5
    states = {t.number: t.state.name for t in again.study.trials}
    assert states[stale.number] == "FAIL"
    retried = [t for t in again.study.trials if t.number > stale.number and t.params == stale.params]
    assert retried and retried[0].state.name in ("COMPLETE", "PRUNED")
    # A finished study gives its best again without running a trial (its model retrained once).
    done = lepton_lab.tune("xgboost", trials=5, **kw)
    assert done.ran_now == 0 and done.trial == again.trial and done.params == again.params
    assert done.value == pytest.approx(again.value)
    with pytest.raises(ConfigError) as e:
        lepton_lab.tune("xgboost", trials=6, direction="minimize", **kw)
    assert "stored to maximize" in _one_line(e)


def _when_a_trial_runs(cluster, study: str, act) -> list:
    """Call ``act(worker address)`` from a thread once a trial of ``study`` has run a moment."""
    done: list = []

    def watch():
        end = time.monotonic() + 60
        while time.monotonic() < end:
            for addr, keys in cluster.client.processing().items():
                if any(str(k).startswith(f"tune-{study}-") for k in keys):
                    time.sleep(0.3)
                    act(addr)
                    done.append(addr)
                    return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return done


def test_a_killed_worker_costs_no_trial(cluster):
    X, y = make_classification(20000, 20, random_state=3)
    pids = cluster.client.run(os.getpid)
    killed = _when_a_trial_runs(cluster, "killed", lambda addr: os.kill(pids[addr], signal.SIGKILL))
    result = lepton_lab.tune("xgboost", data=(X, y), space=SPACE, study="killed", team="finance", trials=4,
                             rounds=150, pruner="none", site="cloud", progress=False, view=False)
    assert killed, "the trials ended before the kill"
    assert result.n_complete == 4 and result.n_failed == 0
    assert checked_cluster({"handle": cluster}, CLUSTER, {"cloud-0", "cloud-1"}) is cluster


def test_timeout_stops_asking_for_trials(cluster, binary):
    X, y = binary
    result = lepton_lab.tune("xgboost", data=(X, y), space=SPACE, study="timed", team="finance", trials=500,
                             timeout=1.0, rounds=30, site="cloud", progress=False, view=False)
    assert 0 < result.ran_now < 500 and result.n_complete + result.n_pruned == result.ran_now


def test_grid_sampler_walks_the_grid(cluster, binary):
    X, y = binary
    result = lepton_lab.tune("xgboost", data=(X, y), space="max_depth=int:2..3 eta=cat:0.1,0.3", study="grid",
                             team="finance", trials=10, rounds=10, sampler="grid", pruner="none",
                             progress=True, view=False)
    seen = {(r["params"]["max_depth"], r["params"]["eta"]) for r in result.trials()}
    assert seen == {(2, 0.1), (2, 0.3), (3, 0.1), (3, 0.3)} and result.ran_now == 4


def test_torch_trials_tune_a_model_factory(cluster):
    from torch import nn

    X, y = load_digits(return_X_y=True)

    def mlp(hidden: int = 16):
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    result = lepton_lab.tune("torch", data=((X / 16).astype("float32"), y), model=mlp,
                             space="hidden=cat:8,32 lr=float:0.001..0.05:log", study="digits", team="medical",
                             trials=3, epochs=3, batch_size=64, progress=False, view=False)
    assert isinstance(result.model, nn.Module) and result.metric == "accuracy"
    assert result.model[0].out_features == result.params["hidden"]
    assert 0.5 < result.value <= 1 and len(result.history) == 3


def test_view_shows_trials_without_widgets(cluster, binary):
    X, y = binary
    result = lepton_lab.tune("xgboost", data=(X, y), space=SPACE, study="viewed", team="finance", trials=3,
                             rounds=10, progress=False, view=False)
    view = StudyView("viewed", "auc", "maximize", widgets=False)
    view.refresh(result.study, figures=True)
    assert "static copy" in view._repr_html_() and "<table" in view._repr_html_()
    assert repr(view).startswith("study viewed (maximize auc): ") and "#0" in repr(view)
    figures = view.figures(result.study)
    assert {"history", "parallel coordinates"} <= set(figures)
    live = StudyView("viewed", "auc", "maximize")
    live.refresh(result.study, figures=True)
    assert "best #" in live.status.value and f"#{result.trial}" in live.status.value


def test_bad_inputs_are_one_line_errors(cluster, binary, monkeypatch):
    X, y = binary
    kw = dict(data=(X, y), team="finance", site="cloud", progress=False, view=False)
    cases = [
        (dict(space=SPACE, sampler="bogus"), "sampler must be one of"),
        (dict(space=SPACE, pruner="never"), "pruner must be one of"),
        (dict(space="max_depth=int:8..2"), "above high"),
        (dict(space=SPACE, trials=0), "trials must be"),
        (dict(space=SPACE, timeout=-1), "timeout must be"),
        (dict(space=SPACE, direction="up"), "direction must be"),
        (dict(space=SPACE, metric="rmse"), "metric for a binary target"),
        (dict(space="eta=float:0.01..0.3", sampler="grid"), "grid sampler needs a finite space"),
        (dict(space=SPACE, study="no/slashes"), "study name"),
        (dict(space=SPACE, loader=print), "unknown option(s) loader"),
    ]
    for extra, words in cases:
        with pytest.raises(ConfigError) as e:
            lepton_lab.tune("xgboost", **{**kw, **extra})
        assert words in _one_line(e), (extra, str(e.value))
    with pytest.raises(NotFound) as e:
        lepton_lab.tune("xgboost", space=SPACE, **{**kw, "team": "nowhere"})
    assert "no team 'nowhere'" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        lepton_lab.tune("lightgbm", space=SPACE, **kw)
    assert "kind must be" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        lepton_lab.tune("xgboost", space=SPACE, study="sited", **{**kw, "site": "nowhere"})
    assert "no workers on site" in _one_line(e)
    # A parameter XGBoost refuses fails the first trials, and the study stops asking for more.
    with pytest.raises(TrainingError) as e:
        lepton_lab.tune("xgboost", space=SPACE, study="refused-param", trials=20, rounds=5,
                        params={"max_bin": -5}, **kw)
    assert "no complete trial yet (first failure: trial " in _one_line(e) and "max_bin" in str(e.value)
    # No cluster at all: a session that knows none.
    from lepton_lab import session as session_module

    monkeypatch.setattr(session_module, "_session", session_module.Session(session_module.EmbeddedTransport()))
    with pytest.raises(ConfigError) as e:
        lepton_lab.tune("xgboost", space=SPACE, **kw)
    assert "no cluster" in _one_line(e)


def test_a_user_without_the_permission_is_refused(cluster, binary, tmp_path, monkeypatch):
    from lepton_lab.security.identity import server_owner

    me = server_owner()
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nteams: [finance]\nmembers:\n  {json.dumps(me)}: {{finance: viewer}}\n")
    monkeypatch.setenv("LEPTON_POLICY", str(policy))
    X, y = binary
    with pytest.raises(PermissionDenied) as e:
        lepton_lab.tune("xgboost", data=(X, y), space=SPACE, study="refused", team="finance", progress=False,
                        view=False)
    assert "lacks clusters:use" in _one_line(e)
    assert not (config.home() / "studies" / "finance" / "refused.log").exists()
    last = AuditLog().path.read_text().strip().splitlines()[-1]
    assert '"deny"' in last and "studies:finance/refused" in last
    # The same rule through the services the server uses.
    services = Services(parse_policy_text(policy.read_text()), home=config.home())
    with pytest.raises(PermissionDenied):
        services.studies().open(Actor(me), "finance", "refused", direction="maximize")
    with pytest.raises(PermissionDenied):
        services.studies().open(Actor("stranger"), "finance", "refused", direction="maximize")
    assert services.studies().names(Actor(me), "finance") == sorted(
        p.stem for p in (config.home() / "studies" / "finance").glob("*.log"))


def test_tune_magic(cluster, binary, capsys):
    X, y = binary
    sh = InteractiveShell.instance()
    lepton_lab.load_ipython_extension(sh)
    sh.user_ns.update(X=X, y=y)
    ok = sh.run_cell(f"%lepton tune xgboost --data X,y --space '{SPACE}' --study magic --team finance "
                     "--trials 3 --rounds 10 --sampler random --pruner hyperband --name best --no-progress")
    assert ok.success, ok.error_in_exec
    out = capsys.readouterr().out
    assert "study magic (team finance): best trial #" in out and "bound to `best`" in out
    assert sh.user_ns["best"].sampler == "random" and sh.user_ns["best"].pruner == "hyperband"
    bad = sh.run_cell("%lepton tune xgboost --data X,y --space 'max_depth=int:8..2' --team finance")
    assert not bad.success
    assert "above high" in str(bad.error_in_exec) and "\n" not in str(bad.error_in_exec)
    bad = sh.run_cell("%lepton tune xgboost --data X,y --space x=int:1..2 --sampler bogus")
    assert not bad.success and "invalid choice" in str(bad.error_in_exec)
    assert math.isfinite(sh.user_ns["best"].value)
    assert np.isfinite(sh.user_ns["best"].model.inplace_predict(X[:3])).all()
