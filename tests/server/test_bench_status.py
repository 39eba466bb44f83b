"""``bench/status_clusters.py`` runs end to end: four servers, clusters created through REST,
every server answering each block's bursts and lone requests, the ratios taken on them.

Its figures are not judged here (benchmarks are never timed tests); this keeps the
benchmark the README quotes for ``/api/status`` from breaking unnoticed."""

from __future__ import annotations

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.timeout(300)


def test_the_status_benchmark_runs_with_clusters_apart_and_in_the_server(tmp_path):
    result = run_bench("status_clusters", "--clusters", "2", "--blocks", "2", out=tmp_path / "status.json")
    assert result["requests_per_server"] == {"loaded": 2 * 5 * 100, "single": 2 * 250}
    # Apart: two schedulers, the process kept ready and the audit writer; in the server: the writer.
    assert result["child_processes"] == {"process-0": 0, "process-2": 4, "in-process-0": 0, "in-process-2": 1}
    for mode in ("process", "in-process"):
        got = result["modes"][mode]
        assert set(got["ratios"]) == {"loaded_p50", "loaded_p99", "single_p50", "single_p99"}
        assert all(r > 0 for r in got["ratios"].values())
        assert all(len(s["blocks"]) == 2 for s in got["ratios_by_block"].values())
        assert len(got["bring_up_s"]["blocks"]) == 2
