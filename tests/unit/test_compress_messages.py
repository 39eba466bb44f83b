"""compress takes data as train does, says its errors in flags, explains a slowdown; policy messages carry no path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from lepton_lab.errors import ConfigError, QuotaExceeded
from lepton_lab.ml.compress import CompressionReport, EvalData, Measurement, compress
from lepton_lab.ml.compress.arguments import CompressArgumentError
from lepton_lab.ml.train.data import _split_indices
from lepton_lab.security.policy import load_policy
from lepton_lab.security.quota import Usage, check_quota


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["label"] = np.where(X[:, 0] > 0, "fraud", "ok")
    return df


def test_a_dataframe_and_target_split_as_train_splits_them(frame):
    evald = EvalData.of(frame, "label", test_size=0.25, seed=3)
    train_idx, test_idx = _split_indices(200, 0.25, 3)
    features = frame[["a", "b", "c"]].to_numpy()
    assert np.array_equal(evald.X_test, features[test_idx]) and np.array_equal(evald.X_train, features[train_idx])
    # string classes become 0..K-1 in sorted order, as train encodes them, and count as classes
    assert evald.y_test.dtype.kind == "i" and evald.is_classification
    assert np.array_equal(evald.y_test, (frame["label"].to_numpy()[test_idx] == "ok").astype(int))
    assert len(EvalData.of(features, frame["label"].to_numpy(), test_size=40).X_test) == 40


def test_bad_data_is_one_line(frame):
    with pytest.raises(CompressArgumentError, match="target='column'") as err:
        EvalData.of(frame)
    assert err.value.magic == "--data is a DataFrame: name its label column with --target COL"
    with pytest.raises(ConfigError, match="not a column of the data"):
        EvalData.of(frame, "nope")
    with pytest.raises(ConfigError, match="test_size must be a fraction"):
        EvalData.of(frame, "label", test_size=1.5)


def test_trees_best_without_early_stopping_is_said_in_python_and_in_flags(frame):
    X, y = frame[["a", "b", "c"]].to_numpy(), (frame["a"] > 0).astype(int).to_numpy()
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(X, label=y), 6)
    with pytest.raises(CompressArgumentError) as err:
        compress(booster, data=(X, y), trees="best")
    assert str(err.value) == ("trees='best' needs a model trained with early stopping "
                              "(train(..., early_stopping=N)); pass trees=N instead (the model has 6 rounds)")
    assert err.value.magic.startswith("--trees best needs a model trained with early stopping")
    assert "--early-stopping N" in err.value.magic and "trees=" not in err.value.magic
    early = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(X[:150], label=y[:150]), 50,
                      evals=[(xgb.DMatrix(X[150:], label=y[150:]), "validation")], early_stopping_rounds=3,
                      verbose_eval=False)
    small, _ = compress(early, data=(X, y), trees="best", force=True)
    assert small.num_boosted_rounds() == int(early.attr("best_iteration")) + 1 < early.num_boosted_rounds()


def _report(before_ms: float, after_ms: float, size: int) -> CompressionReport:
    return CompressionReport(framework="torch", steps=["int8"], metric_name="accuracy",
                             before=Measurement(size, before_ms, before_ms * 8, 90.0),
                             after=Measurement(size // 3, after_ms, after_ms * 8, 90.0))


def test_a_slower_small_model_is_explained_in_text_and_html():
    report = _report(0.05, 0.08, 40_000)
    notes = report.notes()
    assert notes and notes[0].startswith("batch 1 is 1.60x slower (0.05 -> 0.08 ms): batch-1 latency is "
                                         "dominated by call overhead at this size")
    assert "note: batch 1 is 1.60x slower" in str(report)
    assert "dominated by call overhead" in report._repr_html_() and report.to_dict()["notes"] == notes
    # a model slow enough to be compute-bound, or one that got faster, gets no such note
    assert _report(5.0, 6.0, 40_000_000).notes() == []
    assert _report(0.05, 0.04, 40_000).notes() == []
    assert "note:" not in str(_report(0.05, 0.05, 40_000))


def test_policy_messages_name_the_file_not_its_directory(tmp_path):
    path = tmp_path / "deep" / "policy.yaml"
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert str(err.value).startswith("policy.yaml: no policy file") and str(tmp_path) not in str(err.value)
    path.parent.mkdir()
    path.write_text("version: 1\nteams: [finance]\nmembers:\n  ada: {finance: analyst}\n"
                    "quotas:\n  teams:\n    finance: {max_workers: 1}\n")
    policy = load_policy(path)
    with pytest.raises(QuotaExceeded) as err:
        check_quota(policy, "ada", "finance", Usage(), Usage(workers=1), Usage(workers=1))
    assert "quotas.teams.finance.max_workers in policy.yaml)" in str(err.value)
    assert str(tmp_path) not in str(err.value)
    assert str(tmp_path) not in policy.explain("ada", (), "clusters:use", "medical")
    path.write_text("teams: [finance\n")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert str(err.value).startswith("policy.yaml: line ") and str(tmp_path) not in str(err.value)
