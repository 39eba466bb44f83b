"""``%lepton plan`` and the planner in the loop, on a real cluster: a costly cloud site and two cheap hospitals."""

from __future__ import annotations

import numpy as np
import pytest

import lepton_lab

PROFILE = {"name": "plantest", "sites": [
    {"name": "cloud", "kind": "cloud", "workers": 1, "memory": "512MiB", "cost_per_hour": 2.5},
    {"name": "edge-hospital-a", "kind": "edge", "workers": 1, "memory": "768MiB", "cost_per_hour": 0.1},
    {"name": "edge-hospital-b", "kind": "edge", "workers": 1, "memory": "768MiB", "cost_per_hour": 0.1},
]}
EDGES = {"edge-hospital-a", "edge-hospital-b"}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(shell):
    handle = lepton_lab.up(PROFILE, name="plan-mod")
    yield handle
    lepton_lab.down("plan-mod")


def _error(shell, line: str) -> str:
    res = shell.run_cell(line)
    assert not res.success
    return str(res.error_in_exec or res.error_before_exec)


def test_plan_magic_names_the_cheapest_site_its_cost_and_why(shell, cluster, capsys):
    assert shell.run_cell("%lepton plan train").success
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("planner: train on edge-hospital-") and "$0.10/h" in first
    assert "because edge-hospital-" in out and "per worker-hour" in out


def test_plan_magic_keeps_pinned_data_home_and_spreads_trials(shell, cluster, capsys):
    assert shell.run_cell("%lepton plan train --data-site edge-hospital-b --data-stays --data-gb 3").success
    assert "planner: train on edge-hospital-b×1 at $0.10/h; data stays on edge-hospital-b" in capsys.readouterr().out
    assert shell.run_cell("%lepton plan tune --workers 3 --hours 0.5").success
    line = capsys.readouterr().out.splitlines()[0]
    assert "cloud×1" in line and "edge-hospital-a×1" in line and "$2.70/h" in line
    assert shell.run_cell("%lepton plan federate").success
    line = capsys.readouterr().out.splitlines()[0]
    assert "edge-hospital-a×1" in line and "edge-hospital-b×1" in line and "cloud" not in line


@pytest.mark.parametrize("line, reason", [
    ("%lepton plan train --workers 2", "capacity: train takes 2 workers on one site"),
    ("%lepton plan serve --gpus 1", "GPUs: serve takes 1 GPU worker on one site but cloud has 0"),
    ("%lepton plan train --data-site edge-hospital-z --data-stays", "data locality: the data stays on edge-hospital-z"),
    ("%lepton plan train --sites mars", "sites: the cluster has no site 'mars'"),
    ("%lepton plan train --memory 4GiB", "memory: no worker of"),
    ("%lepton plan sing", "invalid choice"),
])
def test_impossible_plans_are_one_line(shell, cluster, line, reason):
    message = _error(shell, line)
    assert reason in message and "\n" not in message.strip()


def test_plan_api_returns_the_choice(cluster):
    choice = lepton_lab.plan("train", gpus=0, data_site="edge-hospital-a", data_gb=1.0)
    assert choice.site == "edge-hospital-a" and choice.data_local is True and choice.cost_per_hour == 0.1
    assert choice.to_dict()["line"] == choice.line()


def test_train_without_a_site_goes_where_the_planner_says(cluster, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    result = lepton_lab.train("xgboost", data=(X, y), name="planned", rounds=3, progress=False)
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("planner:")]
    assert len(said) == 1 and result.site in EDGES and f"train on {result.site}×1" in said[0]
    # A site named by the user is used as it is, without the planner.
    named = lepton_lab.train("xgboost", data=(X, y), name="named", site="cloud", rounds=3, progress=False)
    assert named.site == "cloud" and "planner:" not in capsys.readouterr().out


def test_federate_without_sites_trains_on_every_edge_site(cluster, capsys):
    import torch
    from torch import nn

    def loader(site):
        g = np.random.default_rng(1 if site.endswith("a") else 2)
        X = g.normal(size=(60, 4)).astype("float32")
        return X, (X[:, 0] > 0).astype("float32")

    torch.manual_seed(0)
    result = lepton_lab.federate(nn.Sequential(nn.Linear(4, 1)), loader=loader, rounds=1, progress=False,
                                 secure=False)
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("planner:")]
    assert len(said) == 1 and "federate on edge-hospital-a×1, edge-hospital-b×1" in said[0]
    assert set(result.sites) == EDGES
