"""Every bad input is a 4xx with a one-line JSON message; every refusal is audited with its request id."""

import base64
import json

import numpy as np
import pytest
import torch
from tornado.httpclient import HTTPClientError

from lepton_lab.registry.serialize import to_payload


async def _publish(jp_fetch, tokens, who, team, name, payload, meta):
    headers = {"X-Lepton-Manifest": base64.b64encode(json.dumps(meta).encode()).decode(),
               "Authorization": f"token {tokens[who]}"}
    r = await jp_fetch("lepton", "api", "models", team, name, "versions", method="POST", body=payload,
                       headers=headers, raise_error=False)
    return r.code, json.loads(r.body)


def _one_line(code, reply, *statuses):
    assert code in statuses, (code, reply)
    assert isinstance(reply, dict) and reply["message"] and "\n" not in reply["message"], reply


async def test_models_refuse_what_they_cannot_take(jp_fetch, tokens, as_user):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    payload, facts = to_payload(net, init_kwargs={"in_features": 4, "out_features": 3})
    code, m = await _publish(jp_fetch, tokens, "alice", "medical", "noschema", payload, facts)
    assert code == 201, m
    predict = ("lepton", "api", "models", "medical", "noschema", "versions", "1", "predict")
    code, out = await as_user("alice", *predict, method="POST", body={"inputs": [[0.1, 0.2, 0.3, 0.4]]})
    assert code == 200 and len(out["predictions"]) == 1, out
    code, err = await as_user("alice", *predict, method="POST", body={"inputs": [[1, 2]]})
    _one_line(code, err, 400)
    code, m = await _publish(jp_fetch, tokens, "alice", "medical", "flat", payload,
                             {**facts, "input_schema": {"names": list("abcd"), "dtypes": ["float32"] * 4,
                                                        "shape": [None, 4]}})
    assert code == 201, m
    code, err = await as_user("alice", "lepton", "api", "models", "medical", "flat", "versions", "1", "predict",
                              method="POST", body={"inputs": np.zeros((2, 3, 4)).tolist()})
    _one_line(code, err, 400)
    assert "2-D" in err["message"]
    code, err = await as_user("alice", "lepton", "api", "models", "medical", "flat", "versions", "1", "predict",
                              method="POST", body={"inputs": [[1, 2, 3, 4], [1]]})
    _one_line(code, err, 400)
    # garbage declared as XGBoost
    code, m = await _publish(jp_fetch, tokens, "alice", "medical", "garbage", b"\x00not a model\xff" * 10,
                             {"framework": "xgboost", "framework_version": "2", "format": "ubj"})
    if code == 201:
        code, err = await as_user("alice", "lepton", "api", "models", "medical", "garbage", "versions", "1",
                                  "predict", method="POST", body={"inputs": [[1.0]]})
    _one_line(code, err if code != 201 else m, 400, 422)
    for construction in ("torch.nn.Linear", ["x"], {"target": "x", "kwargs": "abc"}, {"kwargs": {}}):
        code, err = await _publish(jp_fetch, tokens, "alice", "medical", "cons", payload,
                                   {**facts, "construction": construction})
        _one_line(code, err, 400)


async def test_query_and_body_bounds(as_user):
    for since in ("garbage", "9999-99-99", "2025-13-01", "", "\u0661\u0662"):
        code, err = await as_user("admin", "lepton", "api", "audit", params={"since": since})
        _one_line(code, err, 400)
    code, out = await as_user("admin", "lepton", "api", "audit", params={"since": "9999-12-31"})
    assert code == 200 and out["entries"] == []
    for limit in ("\u00b2", "-1", "0", "1e3", "99999"):
        code, err = await as_user("admin", "lepton", "api", "audit", params={"limit": limit})
        _one_line(code, err, 400)
    for memory in ("1e40GiB", "lots", "-4GiB", "0", "1 PB extra"):
        code, err = await as_user("alice", "lepton", "api", "clusters", method="POST",
                                  body={"team": "medical", "memory": memory})
        _one_line(code, err, 400)
    for path in (("nope",), ("clusters", "x", "nope"), ("models", "Bad Team", "x"), ("",)):
        for who in ("alice", "none"):
            code, err = await as_user(who, "lepton", "api", *path)
            _one_line(code, err, 404)


async def test_stream_interval_is_checked_before_upgrading(as_user, jp_ws_fetch):
    code, c = await as_user("admin", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c
    try:
        for interval in ("nan", "inf", "-inf", "abc", "-1", "0.1", "31", "1e309"):
            with pytest.raises(HTTPClientError) as refused:
                await jp_ws_fetch("lepton", "api", "clusters", c["id"], "stream", params={"interval": interval})
            assert refused.value.code == 400, interval
            body = json.loads(refused.value.response.body)
            assert "0.2 to 30" in body["message"]
        with pytest.raises(HTTPClientError) as refused:
            await jp_ws_fetch("lepton", "api", "clusters", "no-such", "stream")
        assert refused.value.code == 404 and json.loads(refused.value.response.body)["message"]
        ws = await jp_ws_fetch("lepton", "api", "clusters", c["id"], "stream", params={"interval": "0.5"})
        first = json.loads(await ws.read_message())
        assert first["cluster"] == c["id"]
        ws.close()
    finally:
        await as_user("admin", "lepton", "api", "clusters", c["id"], method="DELETE")


async def test_audit_read_is_scoped_to_its_teams(as_user):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201
    try:
        await as_user("bob", "lepton", "api", "clusters", c["id"])  # a finance user probes medical: 404
        await as_user("bob", "lepton", "api", "whoami")
        await as_user("alice", "lepton", "api", "templates")
        code, log = await as_user("olga", "lepton", "api", "audit")
        assert code == 200
        users = {e["user"] for e in log["entries"]}
        assert "alice" not in users and "bob" in users
        assert not any("medical" in json.dumps(e) for e in log["entries"])
        # the probe of medical's cluster is a medical line: finance's auditor does not see it
        assert not any(c["id"] in e["resource"] for e in log["entries"])
        code, full = await as_user("admin", "lepton", "api", "audit", params={"user": "bob", "outcome": "deny"})
        probe = [e for e in full["entries"] if c["id"] in e["resource"]]
        assert probe and probe[-1]["request_id"], full["entries"][-3:]
    finally:
        await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")


async def test_quota_refusal_on_scale_is_audited(as_user):
    code, c = await as_user("bob", "lepton", "api", "clusters", method="POST",
                            body={"team": "finance", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c
    try:
        code, err = await as_user("bob", "lepton", "api", "clusters", c["id"], method="PATCH",
                                  body={"site": "cloud", "workers": 9})
        _one_line(code, err, 403)
        _, log = await as_user("admin", "lepton", "api", "audit", params={"user": "bob", "outcome": "deny"})
        assert any("may hold 3 workers" in e["reason"] and e["request_id"] for e in log["entries"])
    finally:
        await as_user("bob", "lepton", "api", "clusters", c["id"], method="DELETE")


async def test_cluster_names_clash_within_a_team(as_user):
    code, a = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "name": "ward", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201
    try:
        code, err = await as_user("alice", "lepton", "api", "clusters", method="POST",
                                  body={"team": "medical", "name": "ward", "workers": {"cloud": 1, "edge": 0}})
        _one_line(code, err, 409)
    finally:
        await as_user("alice", "lepton", "api", "clusters", a["id"], method="DELETE")
