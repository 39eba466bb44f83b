"""Deployments through the real server: a model kept loaded on a site, outliving its kernel and its workers."""

import asyncio
import base64
import json
import os
import signal
import time

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer

import lepton_lab
from lepton_lab import session as session_mod
from lepton_lab.ml import deployments as domain
from lepton_lab.registry.serialize import to_payload
from lepton_lab.rest import RestTransport, ServerInfo


@pytest.fixture(scope="module")
def booster():
    X, y = load_breast_cancer(return_X_y=True)
    return xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                     xgb.DMatrix(X, label=y), num_boost_round=5), X


async def _publish(jp_fetch, tokens, model, name="diagnosis"):
    payload, fmt = to_payload(model)
    meta = {**fmt, "alias": "production",
            "input_schema": {"names": [f"x{i}" for i in range(30)], "dtypes": ["float64"] * 30, "shape": [None, 30]}}
    r = await jp_fetch("lepton", "api", "models", "medical", name, "versions", method="POST", body=payload,
                       headers={"Authorization": f"token {tokens['alice']}",
                                "X-Lepton-Manifest": base64.b64encode(json.dumps(meta).encode()).decode()})
    assert r.code == 201


def _server_client(jp_serverapp, cluster_id):
    services = jp_serverapp.web_app.settings["lepton"]
    return services._client(services.manager.get(cluster_id))


def _addresses(client, name):
    return [a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == name]


def _kill_and_wait_for_replacement(client, name):
    """SIGKILL the worker process ``name``; its nanny starts a new one, which joins under the same name."""
    (old,) = _addresses(client, name)
    pid = client.run(os.getpid, workers=[old])[old]
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        now = _addresses(client, name)
        if now and now != [old]:
            return old, now[0]
        time.sleep(0.2)
    raise AssertionError(f"{name} was not replaced")


async def test_a_deployment_outlives_its_kernel_and_its_worker(as_user, jp_fetch, jp_serverapp, jp_http_port,
                                                                 jp_base_url, tokens, booster, monkeypatch):
    model, X = booster
    want = model.predict(xgb.DMatrix(X[:5]))
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "workers": {"cloud": 1, "edge": 1}})
    assert code == 201, c
    await _publish(jp_fetch, tokens, model)
    route = ("lepton", "api", "clusters", c["id"], "deployments")

    # a kernel of alice's serves it through the server, then goes away
    server = ServerInfo(f"http://localhost:{jp_http_port}{jp_base_url}", tokens["alice"], "test")
    monkeypatch.setattr(session_mod, "_session", session_mod.Session(RestTransport(server)))
    handle = await asyncio.to_thread(lepton_lab.connect_cluster, c["id"])
    d = await asyncio.to_thread(lepton_lab.serve, "diagnosis@production", site="edge")
    assert (d.name, d.version, d.site, d.workers) == ("diagnosis", 1, "edge", ["edge-0"])
    out = await asyncio.to_thread(lepton_lab.predict, "diagnosis", X[:5])
    assert np.allclose(out["probabilities"], want, atol=1e-6) and out["worker"] == "edge-0"
    await asyncio.to_thread(lepton_lab.down)
    assert handle.closed
    monkeypatch.setattr(session_mod, "_session", None)

    code, listing = await as_user("alice", *route)
    assert code == 200 and [(x["name"], x["model"], x["version"], x["alias"], x["workers"])
                            for x in listing["deployments"]] == [("diagnosis", "diagnosis", 1, "production",
                                                                  ["edge-0"])]
    code, out = await as_user("alice", *route, "diagnosis", "predict", method="POST", body={"inputs": X[:5].tolist()})
    assert code == 200 and np.allclose(out["probabilities"], want, atol=1e-6) and out["worker"] == "edge-0"

    # the site's worker dies; its replacement loads the model as it joins and answers
    client = _server_client(jp_serverapp, c["id"])
    old, new = await asyncio.to_thread(_kill_and_wait_for_replacement, client, "edge-0")
    code, out = await as_user("alice", *route, "diagnosis", "predict", method="POST", body={"inputs": X[:5].tolist()})
    assert code == 200 and np.allclose(out["probabilities"], want, atol=1e-6) and out["worker"] == "edge-0"
    held = await asyncio.to_thread(client.run, domain._loaded_here, "diagnosis")
    assert held[new] is True and old not in held

    # the site grows, then loses its first worker for good (nanny and all): the later one serves
    code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="PATCH",
                            body={"site": "edge", "workers": 2})
    assert code == 200
    code, listing = await as_user("alice", *route)
    assert listing["deployments"][0]["workers"] == ["edge-0", "edge-1"]
    await asyncio.to_thread(client.retire_workers, _addresses(client, "edge-0"), close_workers=True)
    code, listing = await as_user("alice", *route)
    assert listing["deployments"][0]["workers"] == ["edge-1"]
    code, out = await as_user("alice", *route, "diagnosis", "predict", method="POST", body={"inputs": X[:2].tolist()})
    assert code == 200 and out["worker"] == "edge-1" and out["rows"] == 2
    # the cloud worker got the plugin and kept nothing
    held = await asyncio.to_thread(client.run, domain._loaded_here, "diagnosis")
    names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    assert {names[a]: v for a, v in held.items()} == {"cloud-0": False, "edge-1": True}

    # stopping it removes the plugin from the scheduler and the model from the workers
    code, _ = await as_user("alice", *route, "diagnosis", method="DELETE")
    assert code == 204
    plugins = await asyncio.to_thread(client.run_on_scheduler,
                                      lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    assert not [p for p in plugins if p.startswith(domain.PLUGIN_PREFIX)]
    held = await asyncio.to_thread(client.run, domain._loaded_here, "diagnosis")
    assert set(held.values()) == {False}
    code, listing = await as_user("alice", *route)
    assert listing == {"deployments": []}
    code, err = await as_user("alice", *route, "diagnosis", "predict", method="POST", body={"inputs": X[:1].tolist()})
    assert code == 404 and "no deployment" in err["message"]
    code, audit = await as_user("admin", "lepton", "api", "audit", params={"action": "clusters:deploy"})
    assert [e["user"] for e in audit["entries"]] == ["alice"]


async def test_who_may_deploy_predict_and_list(as_user, jp_fetch, tokens, booster):
    model, X = booster
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "workers": {"cloud": 0, "edge": 1}})
    assert code == 201, c
    await _publish(jp_fetch, tokens, model)
    route = ("lepton", "api", "clusters", c["id"], "deployments")
    body = {"model": "diagnosis", "alias": "production", "site": "edge"}
    # another team's analyst learns of nothing; the viewer reads but may neither deploy nor predict
    for who, want in (("bob", 404), ("vera", 403)):
        code, err = await as_user(who, *route, method="POST", body=body)
        assert code == want and "\n" not in err["message"], (who, err)
    code, d = await as_user("alice", *route, method="POST", body=body)
    assert code == 201 and d["workers"] == ["edge-0"] and d["by"] == "alice"
    code, again = await as_user("alice", *route, method="POST", body=body)  # asked twice: the same one
    assert code == 201 and again["created"] == d["created"]
    code, _ = await as_user("bob", *route)
    assert code == 404
    code, listing = await as_user("vera", *route)
    assert code == 200 and [x["name"] for x in listing["deployments"]] == ["diagnosis"]
    predict = (*route, "diagnosis", "predict")
    code, _ = await as_user("bob", *predict, method="POST", body={"inputs": X[:1].tolist()})
    assert code == 404
    code, err = await as_user("vera", *predict, method="POST", body={"inputs": X[:1].tolist()})
    assert code == 403
    code, out = await as_user("admin", *predict, method="POST", body={"inputs": X[:3].tolist()})
    assert code == 200 and out["rows"] == 3
    for who, want in (("bob", 404), ("vera", 403)):
        code, _ = await as_user(who, *route, "diagnosis", method="DELETE")
        assert code == want
    # bad inputs and bad requests: one line, 400 (409 for a second deployment of one name)
    for inputs, words in (([[1.0, 2.0]], "30"), ([["a", "b"]], "rows"), ([[[1.0]]], "dimensions"),
                          ("x", "wrong type")):
        code, err = await as_user("alice", *predict, method="POST", body={"inputs": inputs})
        assert code == 400 and words in err["message"] and "\n" not in err["message"], (inputs, err)
    for bad, want, words in (({**body, "site": "fog"}, 400, "no site 'fog'"),
                             ({**body, "name": "Bad Name"}, 400, "deployment name"),
                             ({"model": "diagnosis", "version": 0, "site": "edge"}, 400, "version"),
                             ({"model": "diagnosis", "version": 1, "alias": "production", "site": "edge"}, 400,
                              "not both"),
                             ({"model": "nothing", "site": "edge"}, 404, "nothing"),
                             ({"site": "edge"}, 400, "model"),
                             ({**body, "alias": None, "version": 1, "site": "cloud"}, 409, "already serves")):
        code, err = await as_user("alice", *route, method="POST", body=bad)
        assert code == want and words in err["message"], (bad, err)
