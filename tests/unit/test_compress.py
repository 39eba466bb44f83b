"""compress(): int8 quantization, structured pruning, distillation, XGBoost trees, the report."""

from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from lepton_lab.errors import ConfigError, LeptonError
from lepton_lab.ml.compress import (
    CompressionRefused,
    CompressionReport,
    EvalData,
    build_model,
    compress,
    model_spec,
    state_dict_bytes,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The 2 cores are shared with other jobs; two OpenMP threads then stall at barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with xgb.config_context(nthread=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> EvalData:
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y)
    return EvalData(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)


@pytest.fixture(scope="module")
def mlp(digits) -> nn.Sequential:
    """A 64-256-256-10 MLP trained for a second on digits (about 97 % accuracy)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    X, y = torch.from_numpy(digits.X_train), torch.from_numpy(digits.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        for idx in torch.randperm(len(X)).split(64):
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y)
    return X_train, y_train, X_test, y_test


@pytest.fixture(scope="module")
def xgb_clf(cancer):
    X_train, y_train, X_test, y_test = cancer
    clf = xgb.XGBClassifier(n_estimators=200, max_depth=4, learning_rate=0.1, n_jobs=1,
                            early_stopping_rounds=10, eval_metric="logloss")
    return clf.fit(X_train, y_train, eval_set=[(X_test, y_test)], verbose=False)


def _outputs(model, X) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.as_tensor(X))


# --------------------------------------------------------------------------- torch


def test_int8_is_smaller_and_keeps_accuracy(mlp, digits):
    size_before = state_dict_bytes(mlp)
    model, report = compress(mlp, data=digits, quantize="int8", progress=False)

    assert report.steps == ["int8"]
    assert report.backend.startswith(("torch.ao", "torchao"))
    assert report.size_ratio >= 3.5
    assert abs(report.metric_change) <= 1.0
    assert report.before.metric > 95
    assert report.after.latency_ms_batch1 > 0 and report.after.latency_ms_batch64 > 0
    # The caller's model is untouched.
    assert state_dict_bytes(mlp) == size_before
    assert isinstance(mlp[0], nn.Linear)
    # The spec rebuilds the quantized model, and its saved weights load into it.
    rebuilt = build_model(json.loads(json.dumps(model.lepton_spec)))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(_outputs(rebuilt, digits.X_test), _outputs(model, digits.X_test))


def test_int8_uses_torchao_only_where_it_runs_and_is_not_slower(mlp, monkeypatch):
    behaviours = []

    def quantize_(model, config):
        behaviour = behaviours.pop(0)
        if behaviour == "missing kernel":
            raise RuntimeError("no kernel for this CPU")
        forward = model.forward
        if behaviour == "fast":
            out = forward(torch.zeros(1, 64))
            model.forward = lambda x: out
        else:  # "slow": what torchao's int8 does on CPUs without its fast kernels

            def slow(x):
                time.sleep(0.002)
                return forward(x)

            model.forward = slow

    fake = types.ModuleType("torchao")
    fake.__version__ = "0.0"
    fake.quantization = types.ModuleType("torchao.quantization")
    fake.quantization.quantize_ = quantize_
    fake.quantization.Int8DynamicActivationInt8WeightConfig = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "torchao", fake)
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake.quantization)

    behaviours[:] = ["missing kernel"]
    _, report = compress(mlp, quantize="int8", progress=False)
    assert report.backend.startswith("torch.ao quantize_dynamic")
    behaviours[:] = ["fast"]
    _, report = compress(mlp, quantize="int8", progress=False)
    assert report.backend == "torchao 0.0"
    behaviours[:] = ["slow"]
    model, report = compress(mlp, quantize="int8", progress=False)
    assert report.backend.startswith("torch.ao quantize_dynamic")
    assert "torchao 0.0 ran" in report.backend and "x slower here" in report.backend
    assert isinstance(model[0], torch.ao.nn.quantized.dynamic.Linear)

def test_structured_pruning_really_shrinks(mlp, digits):
    model, report = compress(mlp, data=digits, prune=0.5, progress=False)

    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 64), (128,), (128, 128), (128,), (10, 128), (10,)]
    assert report.details["widths_before"] == [256, 256, 10]
    assert report.details["widths_after"] == [128, 128, 10]
    assert report.size_ratio >= 1.8
    assert report.after.size_bytes == state_dict_bytes(model)
    assert report.steps == ["prune 0.5", "fine-tune 5 epochs"]
    assert report.within_tolerance
    # The JSON spec rebuilds an identical model.
    spec = json.loads(json.dumps(model.lepton_spec))
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(_outputs(rebuilt, digits.X_test), _outputs(model, digits.X_test))


def test_pruning_removes_the_weakest_neurons_exactly(digits):
    # Half the hidden neurons are dead (zero weights and bias): removing them changes nothing.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                          nn.Linear(16, 10)).eval()
    with torch.no_grad():
        for layer, dead in ((model[0], slice(0, 32, 2)), (model[2], slice(1, 16, 2))):
            layer.weight[dead] = 0
            layer.bias[dead] = 0
    pruned, report = compress(model, prune=0.5, progress=False)

    assert report.details["widths_after"] == [16, 8, 10]
    torch.testing.assert_close(_outputs(pruned, digits.X_test), _outputs(model, digits.X_test))


def test_pruning_a_small_cnn_with_batchnorm(digits):
    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))

    torch.manual_seed(0)
    images = digits.X_test.reshape(-1, 1, 8, 8)
    model, report = compress(CNN().eval(), data=(images, digits.y_test), prune=0.5, force=True,
                             progress=False)

    assert report.details["widths_after"] == [4, 8, 16, 10]
    assert model[1].num_features == 4 and model[7].in_features == 8 * 4 * 4
    assert report.size_ratio > 2
    rebuilt = build_model(model.lepton_spec)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(_outputs(rebuilt, images), _outputs(model, images))

    # int8 alone keeps every layer; the result is laid out like its spec, names and all.
    original = CNN().eval()
    model, report = compress(original, data=(images, digits.y_test), quantize="int8",
                             force=True, progress=False)
    rebuilt = build_model(model.lepton_spec)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(_outputs(rebuilt, images), _outputs(model, images))
    torch.testing.assert_close(_outputs(model, images), _outputs(original, images),
                               atol=0.05, rtol=0.05)


def test_prune_then_int8_is_eight_times_smaller(mlp, digits):
    model, report = compress(mlp, data=digits, prune=0.5, quantize="int8", progress=False)

    assert report.steps == ["prune 0.5", "fine-tune 5 epochs", "int8"]
    assert report.size_ratio >= 8
    assert report.metric_change >= -1.0
    assert model.lepton_spec["quantize"] == "int8"


def test_distillation_trains_a_smaller_student(mlp, digits):
    student, report = compress(mlp, data=digits, distill="auto", force=True, epochs=20)

    info = report.details["distill"]
    assert info["student_params"] * 4 < info["teacher_params"]
    assert report.details["widths_after"] == [64, 64, 10]
    assert report.after.metric >= 93
    assert report.size_ratio > 3

    given = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    before = [p.clone() for p in given.parameters()]
    trained, report = compress(mlp, data=digits, distill=given, force=True, epochs=10,
                               progress=False)
    assert report.after.metric >= 90
    assert all(torch.equal(a, b) for a, b in zip(before, given.parameters()))
    assert trained is not given


def test_refuses_over_tolerance_and_force_keeps_it(mlp, digits):
    with pytest.raises(CompressionRefused) as caught:
        compress(mlp, data=digits, prune=0.95, epochs=0, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    report = caught.value.report
    expected = (f"prune 0.95 drops accuracy from {report.before.metric:.1f} to "
                f"{report.after.metric:.1f} (-{-report.metric_change:.1f} points > tolerance "
                f"1.0); pass force=True to keep it")
    assert message == expected
    assert report.metric_change < -1

    model, report = compress(mlp, data=digits, prune=0.95, epochs=0, force=True, progress=False)
    assert report.forced and not report.within_tolerance
    assert report.details["widths_after"] == [13, 13, 10]


def test_takes_a_test_only_tuple_and_no_data(mlp, digits):
    _, report = compress(mlp, data=(digits.X_test, digits.y_test), quantize="int8",
                         metric="auc", progress=False)
    assert report.metric_name == "auc" and report.before.metric > 99
    assert report.steps == ["int8"]  # no training part: nothing to fine-tune

    _, report = compress(mlp, quantize="int8")
    assert report.before.metric is None and report.within_tolerance
    assert report.after.latency_ms_batch64 > 0  # inputs sized from the first Linear


def test_models_that_are_not_a_chain():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 2)

        def forward(self, x):
            return self.b(x + self.a(x))

    assert model_spec(Residual()) is None
    model, report = compress(Residual(), quantize="int8")
    assert not hasattr(model, "lepton_spec") and report.size_ratio > 1
    with pytest.raises(ConfigError, match="plain chain"):
        compress(Residual(), prune=0.5)


# --------------------------------------------------------------------------- xgboost


def test_xgboost_best_iteration_slicing(xgb_clf, cancer):
    rounds = xgb_clf.get_booster().num_boosted_rounds()
    model, report = compress(xgb_clf, data=cancer, trees="best")

    assert isinstance(model, xgb.XGBClassifier)
    assert report.details["rounds_before"] == rounds
    assert report.details["rounds_after"] == xgb_clf.best_iteration + 1 < rounds
    assert report.after.size_bytes < report.before.size_bytes
    assert report.after.size_bytes == len(model.get_booster().save_raw("ubj"))
    assert report.steps == [f"trees {xgb_clf.best_iteration + 1}"]
    assert report.backend.startswith("xgboost")
    assert model.predict(cancer[2]).shape == cancer[3].shape


def test_xgboost_n_trees_and_prune_updater(xgb_clf, cancer):
    booster = xgb_clf.get_booster()
    small, report = compress(booster, data=cancer, trees=10, force=True)
    assert small.num_boosted_rounds() == 10
    assert report.size_ratio > 2

    pruned, report = compress(booster, data=cancer, prune=2.0, force=True)
    assert report.steps == ["prune gamma 2"]
    assert report.details["nodes_after"] < report.details["nodes_before"]
    assert report.size_ratio > 1.1  # deleted nodes are dropped from the file, not just marked
    # Same predictions as XGBoost's own prune update.
    reference = xgb.train({"process_type": "update", "updater": "prune", "gamma": 2.0},
                          xgb.DMatrix(cancer[0], label=cancer[1]),
                          num_boost_round=booster.num_boosted_rounds(), xgb_model=booster)
    np.testing.assert_allclose(pruned.inplace_predict(cancer[2]),
                               reference.inplace_predict(cancer[2]), rtol=1e-6)


# --------------------------------------------------------------------------- report


def test_report_round_trips_and_renders(xgb_clf, cancer):
    _, report = compress(xgb_clf, data=cancer, trees="best", metric="auc")

    data = json.loads(report.to_json())
    assert data["size_ratio"] == pytest.approx(report.size_ratio)
    assert CompressionReport.from_dict(data) == report

    table = report.table()
    assert list(table.columns) == ["before", "after", "change"]
    assert table.loc["size (bytes)", "before"] == report.before.size_bytes
    assert "auc (%)" in table.index
    text = str(report)
    assert "size (bytes)" in text and "smaller" in text
    assert "<table" in report._repr_html_()
    figure = report.figure()
    assert len(figure.data) == 6


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"prune": 1.5}, "in (0, 1)"),
        ({"quantize": "int4"}, "'int4'"),
        ({"trees": 3}, "XGBoost"),
        ({"distill": "auto"}, "data="),
        ({"quantize": "int8", "metric": "f1"}, "metric"),
        ({"quantize": "int8", "tolerance": -1}, "tolerance"),
        ({}, "nothing to do"),
    ],
)
def test_bad_arguments_give_one_line_errors(mlp, kwargs, needle):
    with pytest.raises(ConfigError) as caught:
        compress(mlp, **kwargs)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_model_and_wrong_steps(xgb_clf, cancer, mlp, digits):
    with pytest.raises(ConfigError, match="not sklearn.linear_model.*LogisticRegression"):
        compress(LogisticRegression(), quantize="int8")
    with pytest.raises(ConfigError, match="not quantize"):
        compress(xgb_clf, quantize="int8")
    with pytest.raises(ConfigError, match="early stopping"):
        compress(xgb_clf.get_booster()[:20], trees="best")
    with pytest.raises(ConfigError, match="student's outputs have shape"):
        compress(mlp, data=digits, distill=nn.Linear(64, 3))
    with pytest.raises(LeptonError, match="rows"):
        EvalData.of((cancer[2], cancer[3][:5]))
