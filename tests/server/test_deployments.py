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
from lepton_lab.cluster.workers import workers_now
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
    return [a for a, w in workers_now(client).items() if w["name"] == name]


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
    big = np.repeat(X, 2, axis=0)  # ~0.6 MB of JSON: rows to score are more than other requests carry
    out = await asyncio.to_thread(lepton_lab.predict, "diagnosis", big)
    assert out["rows"] == len(big) and np.allclose(out["probabilities"], model.predict(xgb.DMatrix(big)), atol=1e-6)
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
    names = {a: w["name"] for a, w in workers_now(client).items()}
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
    too_big = json.dumps({"inputs": [[0.5] * 30] * 120_000})
    code, err = await as_user("alice", *predict, method="POST", body=too_big)
    assert code == 400 and err["message"] == "request body over 16384 KiB", (len(too_big), err)
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


def _executing(client) -> dict[str, list[str]]:
    """Worker name -> keys of the tasks its threads run now."""
    def running(dask_worker):
        return [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state == "executing"]

    names = {a: str(w["name"]) for a, w in workers_now(client).items()}
    return {names.get(a, a): keys for a, keys in client.run(running).items() if keys}


def _sleepy_deployment(client) -> None:
    """A deployment on the edge site whose predictions take ten minutes."""
    import torch

    from lepton_lab.ml.deployments import METADATA, PLUGIN_PREFIX, ModelDeployment

    class Sleepy(torch.nn.Module):
        def forward(self, x):
            time.sleep(600)
            return x

    class SleepyDeployment(ModelDeployment):
        def setup(self, worker):
            if "edge" in worker.state.total_resources:
                self.model, self.manifest = Sleepy(), {}

    client.register_plugin(SleepyDeployment("sleepy", "edge", b"", "{}"), name=PLUGIN_PREFIX + "sleepy")
    client.set_metadata([*METADATA, "sleepy"], {"name": "sleepy", "model": "sleepy", "version": 1, "site": "edge",
                                               "team": "medical"})


PREDICT_THEN_WAIT = """
import signal, sys
# Ctrl-C raises KeyboardInterrupt, as in a kernel: a process started in the background inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
from lepton_lab.errors import Interrupted
from lepton_lab.rest import RestTransport, ServerInfo
transport = RestTransport(ServerInfo(sys.argv[1], sys.argv[2], "test"))
try:
    transport.predict_deployed(sys.argv[3], "sleepy", [[1.0, 2.0]])
except Interrupted as e:
    print("interrupted:", e, flush=True)
"""


async def _until(what, check, timeout=90.0):
    end = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < end, f"{what} within {timeout:g} s"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("how", ["interrupt", "gone"])
async def test_a_prediction_stops_when_its_rest_caller_does(how, as_user, jp_serverapp, jp_http_port, jp_base_url,
                                                            tokens):
    """Kernel → Interrupt of a prediction over REST cancels its task on the site; so does a caller that vanishes."""
    import subprocess
    import sys

    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "workers": {"cloud": 0, "edge": 1}})
    assert code == 201, c
    client = _server_client(jp_serverapp, c["id"])
    await asyncio.to_thread(_sleepy_deployment, client)
    url = f"http://localhost:{jp_http_port}{jp_base_url}"
    caller = subprocess.Popen([sys.executable, "-c", PREDICT_THEN_WAIT, url, tokens["alice"], c["id"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        busy = await _until("the prediction runs on edge-0", lambda: _executing(client).get("edge-0"))
        assert all(k.startswith("predict-sleepy-") for k in busy)
        running_on = _addresses(client, "edge-0")
        caller.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)
        out, err = await asyncio.to_thread(caller.communicate, timeout=120)
    finally:
        if caller.poll() is None:
            caller.kill()
    if how == "interrupt":
        # one line from the server: the task cancelled, and the worker restarted to stop its running code
        assert out.strip() == ("interrupted: cancelled job predict sleepy@1 on edge-0 "
                               "(restarted edge-0 to stop its running code)"), (out, err)
    # Its code ran on after the cancel, so the server restarted edge-0 (after a grace period); the
    # request that waited for it ended. Neither waits for the other: the test waits for both.
    await _until("edge-0 restarted and idle", lambda: _addresses(client, "edge-0") not in ([], running_on)
                 and not _executing(client))
    await _until("the server no longer holds the prediction",
                 lambda: not jp_serverapp.web_app.settings["lepton"].predicting)
    # nothing is left to cancel: the job ended
    code, err = await as_user("alice", "lepton", "api", "clusters", c["id"], "deployments", "sleepy", "predict",
                              "0" * 32, method="DELETE")
    assert code == 404 and "has ended" in err["message"]
