"""Notebook HTML comes from the package's Jinja templates: names a user or a site chose are escaped in every repr."""

from __future__ import annotations

import math
import re
from importlib import resources

import numpy as np
import optuna
import pytest

from lepton_lab.cluster.placement import Choice, Pick
from lepton_lab.ml.compress.report import CompressionReport, CompressionResult, Measurement
from lepton_lab.ml.federated.result import FederatedResult, RoundRecord
from lepton_lab.ml.train.result import TrainResult
from lepton_lab.ml.tune_result import TuneResult
from lepton_lab.ml.tune_view import StudyView
from lepton_lab.reprs import environment, num, render, short

BAD = "<script>alert(1)</script>"
SAFE = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _escaped(html: str, times: int = 1) -> None:
    assert "<script" not in html
    assert html.count(SAFE) >= times


def _train_fields(name: str = BAD) -> dict:
    return dict(name=name, kind="torch", model=None, metrics={BAD: 0.93125, "loss": np.float32(0.25)},
                history=[{"loss": 1.0}, {"loss": 0.5}], strategy=f"single:{BAD}", workers=[f"w-{BAD}"],
                site=f"site-{BAD}", duration_s=12.34, checkpoints="", resumed_from=None,
                data_fingerprint="ab" * 32, input_schema={"shape": [100, 4]}, task="binary")


def _cells(html: str) -> dict[str, str]:
    return dict(re.findall(r"<th style='text-align:left'>(.*?)</th><td style='text-align:left'>(.*?)</td>", html))


def test_train_result_is_escaped_and_keeps_its_rows():
    html = TrainResult(**_train_fields())._repr_html_()
    _escaped(html, times=5)  # name, metric, strategy, worker, site
    assert html.startswith("<div class='lepton-train'><b>Lepton training &lt;script&gt;")
    cells = _cells(html)
    assert list(cells) == ["model", "holdout", "strategy", "workers", "time", "resumed from", "checkpoints", "data"]
    assert cells["model"] == "torch (binary), 2 epochs"
    assert cells["holdout"] == f"{SAFE} 0.9313, loss 0.2500"
    assert cells["time"] == "12.3 s" and cells["resumed from"] == "—" and cells["checkpoints"] == "—"
    assert cells["data"] == "[100, 4] sha256 abababababababab…"
    resumed = TrainResult(**{**_train_fields("ok"), "resumed_from": 3, "restarts": 1, "kind": "xgboost"})
    assert _cells(resumed._repr_html_())["resumed from"] == "round 3 (1 restart(s))"


def test_tune_result_is_escaped():
    result = TuneResult(**_train_fields(), study_name=BAD, trial=4, team=BAD, params={BAD: 0.012345, "depth": 6},
                        value=0.9, metric=BAD, direction="maximize", sampler="tpe", pruner="median",
                        n_complete=3, n_pruned=1, n_failed=0, ran_now=4)
    html = result._repr_html_()
    _escaped(html, times=5)  # study (title and row), team, metric, parameter name
    cells = _cells(html)
    assert cells["best trial"] == f"#4: {SAFE} 0.9000 (maximize)"
    assert cells["parameters"] == f"{SAFE}=0.01235, depth=6"
    assert cells["trials"] == "3 complete, 1 pruned, 0 failed (4 run now)"
    assert html.startswith("<div class='lepton-tune'>")


def test_study_view_is_escaped_and_marks_the_best():
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate((0.5, 0.9, 0.7)):
        trial = study.ask({BAD: optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("worker", f"w{i}-{BAD}")
        study.tell(trial, value)
    view = StudyView(BAD, BAD, "maximize", widgets=False)
    view.refresh(study)
    html = view._repr_html_()
    _escaped(html, times=6)  # status (name, metric), header (metric, param), three workers
    assert "static copy" in html and "<table class='lepton-tune-trials'>" in html
    rows = re.findall(r"<tr( style='font-weight:bold')?><td style='text-align:left'>(\d+)</td>", html)
    assert rows == [(" style='font-weight:bold'", "1"), ("", "2"), ("", "0")]  # the best first, then the latest
    assert "more trial(s)" not in html
    assert view._status_html() == f"<b>study {SAFE} (maximize {SAFE}): 3 complete; best #1 {SAFE}=0.9</b>"


def test_compression_report_is_escaped_and_keeps_the_table():
    report = CompressionReport("pytorch", [BAD], Measurement(200_000, 0.2, 0.5, 95.0),
                               Measurement(50_000, 0.5, 0.25, 94.5), metric_name="accuracy", backend=BAD)
    html = CompressionResult(None, report)._repr_html_()
    _escaped(html, times=2)  # the step and the backend in the headline
    assert "<table border=\"1\" class=\"dataframe\">" in html and "<p class='lepton-note'>" in html
    assert "<tr><th>size (bytes)</th><td>200,000</td><td>50,000</td><td>4.00x smaller</td></tr>" in html
    assert "<th>accuracy (%)</th><td>95</td><td>94.5</td><td>-0.50 points</td>" in html
    weird = CompressionReport("xgboost", ["trees"], Measurement(10), Measurement(5), metric_name=BAD)
    _escaped(weird._repr_html_())


def test_federated_result_is_escaped():
    site = f"edge-{BAD}"
    record = RoundRecord(round=0, sites=[site, "b"], aggregated=[site], dropped={"b": f"train: {BAD}"},
                         unavailable=[], site_metrics={site: {"accuracy": 0.91234}, "b": {"loss": 1.0}},
                         global_metrics={"loss": 0.3, "accuracy": 0.9}, epsilon=None, skipped=None, rekeyed=True,
                         seconds=1.5)
    skipped = RoundRecord(round=1, sites=[site], aggregated=[], dropped={}, unavailable=[site], site_metrics={},
                          global_metrics={}, epsilon=0.5, skipped=BAD, rekeyed=False, seconds=0.25)
    dp = {"clip": 1.0, "noise_multiplier": 1.1, "epsilon": 2.5, "delta": 1e-5}
    result = FederatedResult(model=None, history=[record, skipped], rounds=2, strategy=BAD, secure=True, dp=dp,
                             sites=[site, "b"],
                             lineage={"sites": [{"site": site, "samples": 40}, {"site": "b", "samples": 2}]},
                             name=BAD, seconds=3.0)
    html = result._repr_html_()
    _escaped(html, times=7)  # name, strategy, samples, aggregated, dropped reason, local accuracy, skipped
    assert f"<b>Federated run {SAFE}</b>: {SAFE}, secure aggregation, central DP, clip 1, noise ×1.1: " \
           f"ε = 2.500 at δ = 1e-05; 1/2 rounds in 3.0 s; samples per site (counts only) edge-{SAFE}: 40, b: 2" in html
    assert f"<td style='text-align:left'>b (train: {SAFE})</td>" in html
    assert f"<td style='text-align:left'>edge-{SAFE} 0.912</td>" in html
    assert f"<td style='text-align:left'><b>skipped</b>: {SAFE}</td>" in html
    assert "<td style='text-align:left'>0.3000</td><td style='text-align:left'>0.9000</td>" in html
    assert "<td style='text-align:left'>0.500</td><td style='text-align:left'>0.25</td>" in html


def test_placement_choice_is_escaped():
    choice = Choice("train", [Pick(f"cloud-{BAD}", "cloud", 2, 0, 1.5)], 1.5, None, None, 0.0, False, [BAD])
    html = choice._repr_html_()
    _escaped(html, times=3)  # the line, the site, the reason
    assert f"<tr><td>cloud-{SAFE}</td><td>cloud</td><td>2</td><td>0</td><td>$1.50/h</td></tr>" in html
    assert f"<li>{SAFE}</li>" in html


def test_filters_and_the_environment():
    assert num(None, ".2f") == "" and num(1.234, ".2f") == "1.23" and num(2, ".2f") == "2.00"
    assert short(None) == "" and short(math.nan) == "nan" and short(0.123456) == "0.1235"
    assert short(123456) == "123456" and short(np.float32(0.5)) == "0.5" and short("x") == "x"
    assert environment().autoescape is True
    with pytest.raises(Exception, match="undefined"):
        render("placement_choice", line="x")  # a missing name is an error, not an empty cell


def test_every_template_ships_inside_the_package_and_compiles():
    folder = resources.files("lepton_lab.reprs") / "templates"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".html.j2"))
    assert {"train_result.html.j2", "compression_report.html.j2", "federated_result.html.j2"} <= set(names)
    for name in names:
        environment().get_template(name)
