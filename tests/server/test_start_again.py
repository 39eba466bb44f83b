"""A stopped cluster started again: its name, team, profile and sizes as last scaled, serving what it served."""

import asyncio
import json

import numpy as np
import xgboost as xgb

from lepton_lab.services.watch import stop_idle
from tests.server.test_deployments import _publish, booster  # noqa: F401  (a fixture)

OLD_RECORD = {
    "id": "0a1b2c3d4e5f", "name": "ward", "owner": "alice", "team": "medical", "profile": "local",
    "created": "2026-01-02T03:04:05+00:00", "status": "stopped", "stopped_reason": "the Jupyter server stopped",
    "stopped_at": "2026-01-02T04:00:00+00:00", "scheduler_address": "", "dashboard_link": "",
    "cost_per_hour": 0.0, "tls": True, "ca_dir": "",
    "sites": [{"name": "cloud", "kind": "cloud", "workers": 1, "gpus": 0, "threads": 1,
               "memory": "1 GiB", "cost_per_hour": 0.0}],
}


async def test_start_again_serves_the_same_versions_on_the_sizes_it_had(as_user, jp_fetch, jp_serverapp, tokens,
                                                                          booster):  # noqa: F811
    services = jp_serverapp.web_app.settings["lepton"]
    model, X = booster
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "name": "ward",
                                  "workers": {"cloud": 0, "edge": 1}})
    assert code == 201, c
    await _publish(jp_fetch, tokens, model)
    await _publish(jp_fetch, tokens, model, name="triage")
    await _publish(jp_fetch, tokens, model, name="triage")  # version 2 takes the production alias
    route = ("lepton", "api", "clusters", c["id"], "deployments")
    for name in ("diagnosis", "triage"):
        code, d = await as_user("alice", *route, method="POST", body={"model": name, "version": 1, "site": "edge"})
        assert code == 201, d
    code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="PATCH",
                            body={"site": "edge", "workers": 2})
    assert code == 200
    # the cluster stops (idle, here); then a version it served is deleted
    await asyncio.to_thread(stop_idle, services, services.manager.get(c["id"]), 3600.0, (1800.0, "team medical"))
    code, _ = await as_user("admin", "lepton", "api", "models", "medical", "triage", "versions", "1", method="DELETE")
    assert code == 204

    start = ("lepton", "api", "clusters", c["id"], "start")
    code, err = await as_user("bob", *start, method="POST")  # another team: no such cluster
    assert code == 404, err
    code, err = await as_user("vera", *start, method="POST")  # the team's viewer may not start clusters
    assert code == 403 and "\n" not in err["message"], err
    code, err = await as_user("alice", *start, method="POST", body={"workers": 3})
    assert code == 400 and "workers" in err["message"], err

    code, again = await as_user("alice", *start, method="POST")
    assert code == 201, again
    assert again["id"] != c["id"] and (again["name"], again["team"], again["owner"]) == ("ward", "medical", "alice")
    assert {s["name"]: s["workers"] for s in again["sites"]} == {"cloud": 0, "edge": 2}
    assert again["redeployed"] == ["diagnosis"]
    assert list(again["not_redeployed"]) == ["triage"] and "\n" not in again["not_redeployed"]["triage"]
    code, out = await as_user("alice", "lepton", "api", "clusters", again["id"], "deployments", "diagnosis",
                              "predict", method="POST", body={"inputs": X[:3].tolist()})
    assert code == 200 and np.allclose(out["probabilities"], model.predict(xgb.DMatrix(X[:3])), atol=1e-6)
    assert out["worker"] in ("edge-0", "edge-1")

    # one cluster of that name is listed, running; the stopped record it replaced is gone
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    assert [(x["name"], x["status"]) for x in listing["clusters"]] == [("ward", "running")]
    code, err = await as_user("alice", "lepton", "api", "clusters", again["id"], "start", method="POST")
    assert code == 409 and err["message"] == "cluster ward is running"
    code, err = await as_user("alice", *start, method="POST")  # the old id is gone with its record
    assert code == 404
    _, log = await as_user("admin", "lepton", "api", "audit", params={"action": "clusters:start-again"})
    [line] = log["entries"]
    assert line["user"] == "alice" and line["detail"]["previous"] == c["id"]
    assert line["detail"]["redeployed"] == ["diagnosis"]
    code, _ = await as_user("alice", "lepton", "api", "clusters", again["id"], method="DELETE")
    assert code == 204


async def test_a_record_without_its_settings_cannot_be_started_again(as_user, jp_serverapp, lepton_home):
    services = jp_serverapp.web_app.settings["lepton"]
    services.records[OLD_RECORD["id"]] = dict(OLD_RECORD)
    code, err = await as_user("alice", "lepton", "api", "clusters", OLD_RECORD["id"], "start", method="POST")
    assert code == 400 and err["message"] == "cluster ward was recorded without its settings; start a new one"
    code, err = await as_user("alice", "lepton", "api", "clusters", "nothing", "start", method="POST")
    assert code == 404 and err["message"] == "no cluster 'nothing'"
    assert json.loads(json.dumps(services.records[OLD_RECORD["id"]])) == OLD_RECORD  # nothing changed
