"""``bench/registry.py`` runs end to end in a fresh LEPTON_HOME: every child publishes and loads
through the public API and the baseline, and each load predicts as the published model.

Its figures are not judged here (benchmarks are never timed tests); this only keeps the
benchmark the README quotes from breaking unnoticed, as it did once when it published to a
team the starting policy does not hold."""

from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.timeout(300)


def test_the_registry_benchmark_runs_and_every_load_predicts_as_published(tmp_path):
    result = run_bench("registry", "--size-mb", "4", "--repeats", "1", out=tmp_path / "registry.json")
    assert result["same_predictions"] is True
    assert {"load", "publish", "publish_load"} <= set(result)
