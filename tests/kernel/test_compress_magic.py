"""``%lepton train --early-stopping`` and ``%lepton compress`` on a DataFrame, through a real IPython shell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lepton_lab

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(shell):
    handle = lepton_lab.up({"name": "compress-magic", "sites": [
        {"name": "cloud", "kind": "cloud", "workers": 1, "memory": "768MiB"}]}, name="compress-magic")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(800, 6))
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    df["is_fraud"] = ((np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.3 * rng.normal(size=800)) > 0).astype(int)
    shell.user_ns["df"] = df
    yield handle
    lepton_lab.down("compress-magic")


def _error(shell, line: str) -> str:
    res = shell.run_cell(line)
    assert not res.success, line
    return str(res.error_in_exec or res.error_before_exec)


def test_early_stopping_then_trees_best_on_the_dataframe(shell, cluster, capsys):
    res = shell.run_cell("%lepton train xgboost --data df --target is_fraud --name fraud --site cloud "
                         "--rounds 300 --early-stopping 10 --no-progress")
    assert res.success, res.error_in_exec
    booster = shell.user_ns["fraud"].model
    best = int(booster.attr("best_iteration"))
    # it stopped: 10 rounds without improvement after the best, far before 300
    assert booster.num_boosted_rounds() == best + 1 + 10 < 300
    assert "stopped early" in shell.user_ns["fraud"]._repr_html_()
    capsys.readouterr()
    res = shell.run_cell("%lepton compress fraud --data df --target is_fraud --trees best --as fraud_small")
    assert res.success, res.error_in_exec
    small, report = shell.user_ns["fraud_small"]
    assert small.num_boosted_rounds() == best + 1
    assert report.steps == [f"trees {best + 1}"] and report.metric_name == "accuracy"
    # measured on train's own holdout: the accuracy before is the one training reported
    assert report.before.metric == pytest.approx(shell.user_ns["fraud"].metrics["accuracy"] * 100, abs=1e-6)


def test_compress_a_dataframe_without_target_says_to_add_one(shell, cluster):
    shell.run_cell("import xgboost as xgb\n"
                   "plain = xgb.train({'objective': 'binary:logistic'}, "
                   "xgb.DMatrix(df.drop(columns='is_fraud'), label=df.is_fraud), 8)")
    message = _error(shell, "%lepton compress plain --data df --trees 4")
    assert message == "%lepton compress: --data is a DataFrame: name its label column with --target COL"


def test_trees_best_without_early_stopping_names_the_flags(shell, cluster):
    message = _error(shell, "%lepton compress plain --data df --target is_fraud --trees best")
    assert message.startswith("%lepton compress: --trees best needs a model trained with early stopping")
    assert "--early-stopping N" in message and "--trees N" in message and "8 rounds" in message
    assert "trees='best'" not in message and "trees=N" not in message
    assert "--trees 9 does not cut anything" in _error(shell, "%lepton compress plain --data df --target is_fraud "
                                                              "--trees 9")
    assert "pass --quantize int8, --prune F, --distill or --trees" in _error(
        shell, "%lepton compress plain --data df --target is_fraud")
    assert "--test-size splits the data of --target" in _error(
        shell, "%lepton compress plain --data df --test-size 0.3 --trees 4")


def test_refusal_from_the_magic_says_force(shell, cluster):
    message = _error(shell, "%lepton compress plain --data df --target is_fraud --trees 1 --tolerance 0")
    assert "pass --force to keep it" in message and "force=True" not in message
    assert shell.run_cell("%lepton compress plain --data df --target is_fraud --trees 1 --tolerance 0 "
                          "--force").success


def test_compress_splits_like_train_with_a_row_count_holdout(shell, cluster):
    res = shell.run_cell("%lepton compress plain --data df --target is_fraud --test-size 100 --trees 4 --force")
    assert res.success, res.error_in_exec
    report = shell.user_ns["plain_small"].report
    from lepton_lab.ml.compress import EvalData

    evald = EvalData.of(shell.user_ns["df"], "is_fraud", test_size=100)
    assert len(evald.X_test) == 100 and len(evald.X_train) == 700
    assert report.before.metric is not None
