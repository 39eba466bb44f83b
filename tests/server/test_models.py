"""Registry routes with team rules: a finance analyst cannot list, load or learn of a medical model."""

import base64
import json

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer

from lepton_lab.registry.serialize import to_payload


@pytest.fixture(scope="module")
def booster():
    X, y = load_breast_cancer(return_X_y=True)
    return xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                     xgb.DMatrix(X, label=y), num_boost_round=5), X


async def publish(jp_fetch, tokens, who, team, name, model, **meta):
    payload, fmt = to_payload(model)
    headers = {"X-Lepton-Manifest": base64.b64encode(json.dumps({**fmt, **meta}).encode()).decode()}
    if who != "admin":
        headers["Authorization"] = f"token {tokens[who]}"
    r = await jp_fetch("lepton", "api", "models", team, name, "versions", method="POST", body=payload,
                       headers=headers, raise_error=False)
    try:
        return r.code, json.loads(r.body)
    except ValueError:
        return r.code, r.body  # a route that does not match at all answers with Jupyter's HTML 404


async def test_publish_list_load_predict_with_team_rules(jp_fetch, tokens, as_user, booster):
    model, X = booster
    code, m = await publish(jp_fetch, tokens, "alice", "medical", "diagnosis", model,
                            metrics={"auc": 0.99}, alias="production",
                            input_schema={"names": [f"x{i}" for i in range(30)], "dtypes": ["float64"] * 30,
                                          "shape": [None, 30]})
    assert code == 201, m
    assert m["version"] == 1 and m["signer"] == "alice" and m["team"] == "medical"
    # the medical analyst and the viewer see it; the finance analyst does not learn of it
    _, listing = await as_user("alice", "lepton", "api", "models")
    assert [x["name"] for x in listing["models"]] == ["diagnosis"]
    _, listing = await as_user("vera", "lepton", "api", "models", params={"team": "medical"})
    assert [x["name"] for x in listing["models"]] == ["diagnosis"]
    _, listing = await as_user("bob", "lepton", "api", "models")
    assert listing == {"models": []}
    for path in (["models", "medical", "diagnosis"],
                 ["models", "medical", "diagnosis", "versions", "1", "manifest"],
                 ["models", "medical", "diagnosis", "versions", "production", "artifact"]):
        code, err = await as_user("bob", "lepton", "api", *path)
        assert code == 404, path
    code, _ = await as_user("bob", "lepton", "api", "models", "medical", "diagnosis", "versions", "1", "predict",
                            method="POST", body={"inputs": X[:2].tolist()})
    assert code == 404
    # nor publish into it
    code, _ = await publish(jp_fetch, tokens, "bob", "medical", "diagnosis", model)
    assert code == 404
    # the viewer reads but may not publish
    code, err = await publish(jp_fetch, tokens, "vera", "medical", "diagnosis", model)
    assert code == 403 and "models:publish" in err["message"]
    # predictions from the published version
    code, out = await as_user("vera", "lepton", "api", "models", "medical", "diagnosis", "versions",
                              "production", "predict", method="POST", body={"inputs": X[:5].tolist()})
    assert code == 200
    assert np.allclose(out["probabilities"], model.predict(xgb.DMatrix(X[:5])), atol=1e-6)
    code, err = await as_user("vera", "lepton", "api", "models", "medical", "diagnosis", "versions",
                              "1", "predict", method="POST", body={"inputs": X[:5, :10].tolist()})
    assert code == 400 and "30" in err["message"]
    # the artifact comes back verified, in XGBoost's own format
    r = await jp_fetch("lepton", "api", "models", "medical", "diagnosis", "versions", "1", "artifact",
                       headers={"Authorization": f"token {tokens['alice']}"})
    loaded = xgb.Booster()
    loaded.load_model(bytearray(r.body))
    assert np.allclose(loaded.predict(xgb.DMatrix(X[:5])), model.predict(xgb.DMatrix(X[:5])))


async def test_alias_and_admin_delete(jp_fetch, tokens, as_user, booster):
    model, _ = booster
    for _ in range(2):
        code, m = await publish(jp_fetch, tokens, "bob", "finance", "fraud", model)
        assert code == 201
    code, out = await as_user("bob", "lepton", "api", "models", "finance", "fraud", "aliases", "production",
                              method="PUT", body={"version": 2})
    assert code == 200 and out["aliases"] == {"production": 2}
    code, err = await as_user("bob", "lepton", "api", "models", "finance", "fraud", "versions", "1",
                              method="DELETE")
    assert code == 403
    code, _ = await as_user("admin", "lepton", "api", "models", "finance", "fraud", "versions", "1",
                            method="DELETE")
    assert code == 204
    _, out = await as_user("bob", "lepton", "api", "models", "finance", "fraud")
    assert [v["version"] for v in out["versions"]] == [2]


async def test_tampered_artifact_is_refused(jp_fetch, tokens, as_user, booster, lepton_home):
    model, _ = booster
    code, m = await publish(jp_fetch, tokens, "bob", "finance", "fraud", model)
    [artifact] = (lepton_home / "registry").rglob("artifact.enc")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    code, err = await as_user("bob", "lepton", "api", "models", "finance", "fraud", "versions", "1", "artifact")
    assert code == 422 and "\n" not in err["message"]


async def test_bad_publish_requests(jp_fetch, tokens, booster):
    model, _ = booster
    r = await jp_fetch("lepton", "api", "models", "finance", "fraud", "versions", method="POST", body=b"xx",
                       headers={"Authorization": f"token {tokens['bob']}", "X-Lepton-Manifest": "%%%"},
                       raise_error=False)
    assert r.code == 400
    code, err = await publish(jp_fetch, tokens, "bob", "finance", "fraud", model, colour="red")
    assert code == 400 and "colour" in err["message"]
    code, err = await publish(jp_fetch, tokens, "bob", "finance", "fraud", model, tags="a,b")
    assert code == 400 and err["message"] == "X-Lepton-Manifest: tags: wrong type: must be a list, got a string"
    code, err = await publish(jp_fetch, tokens, "bob", "finance", "fraud", model, description=True)
    assert code == 400 and err["message"].startswith("X-Lepton-Manifest: description: wrong type")
    code, err = await publish(jp_fetch, tokens, "bob", "finance", "Bad Name", model)
    assert code == 404
