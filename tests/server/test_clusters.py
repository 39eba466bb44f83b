"""Cluster routes through the real server, with every identity."""

import asyncio
import sys

import pytest

from tests.helpers import fake_nvml

WHO = ("admin", "alice", "bob", "vera", "none")

# route                                   method  body                                   admin alice bob  vera none
MATRIX = [
    ("whoami",                              "GET",   None,                                   200, 200, 200, 200, 401),
    ("profiles",                            "GET",   None,                                   200, 200, 200, 200, 401),
    ("clusters",                            "GET",   None,                                   200, 200, 200, 200, 401),
    ("clusters",                            "POST",  {"team": "medical", "profile": "nope"}, 400, 400, 403, 403, 401),
    ("clusters/{id}",                       "GET",   None,                                   200, 200, 404, 200, 401),
    ("clusters/{id}",                       "PATCH", {"site": "fog", "workers": 1},          400, 400, 404, 403, 401),
    ("clusters/{id}/allocation",            "GET",   None,                                   200, 200, 404, 200, 401),
    ("clusters/{id}/credentials",           "GET",   None,                                   200, 200, 404, 403, 401),
    ("templates",                           "GET",   None,                                   200, 200, 200, 200, 401),
    ("templates/copy",                      "POST",  {"team": "medical", "name": "federated-diagnosis"},
                                                                                             201, 201, 404, 201, 401),
    ("audit",                               "GET",   None,                                   200, 403, 403, 403, 401),
    ("clusters/{id}",                       "DELETE", None,                                  None, 204, 404, 403, 401),
]


async def test_every_route_for_every_identity(as_user):
    """One table: what each identity gets on each route (alice owns a medical cluster)."""
    code, cluster = await as_user("alice", "lepton", "api", "clusters", method="POST",
                                  body={"team": "medical", "profile": "local", "workers": {"cloud": 1, "edge": 1}})
    assert code == 201, cluster
    failures = []
    for route, method, body, *expected in MATRIX:
        path = route.format(id=cluster["id"])
        for who, want in zip(WHO, expected):
            if want is None:
                continue
            if method == "DELETE" and who == "alice":
                continue  # the owner's delete runs last, below
            code, reply = await as_user(who, "lepton", "api", *path.split("/"), method=method, body=body)
            if code != want:
                failures.append(f"{method} {route} as {who}: {code} (want {want}) {reply}")
            if code >= 400:
                assert isinstance(reply, dict) and reply["message"] and "\n" not in reply["message"]
    assert not failures, "\n".join(failures)
    code, _ = await as_user("alice", "lepton", "api", "clusters", cluster["id"], method="DELETE")
    assert code == 204


async def test_create_list_scale_stop(as_user):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "name": "ward",
                                  "workers": {"cloud": 1, "edge": 1}})
    assert code == 201
    assert c["owner"] == "alice" and c["team"] == "medical" and c["tls"] is True
    assert c["scheduler_address"].startswith("tls://127.0.0.1:")
    assert "connect_cluster" in c["connect_code"]
    assert {s["name"]: s["workers"] for s in c["sites"]} == {"cloud": 1, "edge": 1}
    # the finance analyst does not learn of it; the viewer of both teams sees it
    _, listing = await as_user("bob", "lepton", "api", "clusters")
    assert listing == {"clusters": []}
    _, listing = await as_user("vera", "lepton", "api", "clusters")
    assert [x["name"] for x in listing["clusters"]] == ["ward"]
    code, c2 = await as_user("alice", "lepton", "api", "clusters", c["id"], method="PATCH",
                             body={"site": "edge", "workers": 2})
    assert code == 200 and {s["name"]: s["workers"] for s in c2["sites"]}["edge"] == 2
    code, snap = await as_user("alice", "lepton", "api", "clusters", c["id"], "allocation")
    assert code == 200 and snap["totals"]["workers"] == 3
    assert sorted(w["name"] for w in snap["workers"]) == ["cloud-0", "edge-0", "edge-1"]
    # a second cluster with the same name is a conflict
    code, err = await as_user("alice", "lepton", "api", "clusters", method="POST",
                              body={"team": "medical", "name": "ward", "workers": {"cloud": 1, "edge": 0}})
    assert code == 409 and "already running" in err["message"]
    code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")
    assert code == 204
    code, err = await as_user("alice", "lepton", "api", "clusters", c["id"])
    assert code == 404


async def test_cluster_names_are_unique_per_team_and_never_disclosed(as_user):
    body = {"profile": "local", "name": "night-run", "workers": {"cloud": 1, "edge": 0}}
    code, med = await as_user("alice", "lepton", "api", "clusters", method="POST", body={**body, "team": "medical"})
    assert code == 201, med
    try:
        # the same name in another team is no conflict, and says nothing of the medical cluster
        code, fin = await as_user("fiona", "lepton", "api", "clusters", method="POST", body={**body, "team": "finance"})
        assert code == 201, fin
        assert fin["id"] != med["id"] and fin["team"] == "finance"
        # by name, each team finds its own cluster
        code, got = await as_user("fiona", "lepton", "api", "clusters", "night-run")
        assert code == 200 and got["id"] == fin["id"]
        code, got = await as_user("alice", "lepton", "api", "clusters", "night-run")
        assert code == 200 and got["id"] == med["id"]
        # within one team it is a conflict, named with the team
        code, err = await as_user("alice", "lepton", "api", "clusters", method="POST",
                                  body={**body, "team": "medical"})
        assert code == 409 and "team medical" in err["message"], err
        code, _ = await as_user("fiona", "lepton", "api", "clusters", fin["id"], method="DELETE")
        assert code == 204
    finally:
        code, _ = await as_user("alice", "lepton", "api", "clusters", med["id"], method="DELETE")
        assert code == 204


async def test_quota_refusal_gives_the_numbers(as_user, monkeypatch):
    code, err = await as_user("bob", "lepton", "api", "clusters", method="POST",
                              body={"team": "finance", "profile": "local"})
    assert code == 403
    assert err["message"].startswith("user bob may hold 3 workers; 0 are in use and this request asks for 4")
    # A machine without GPUs, whatever this one has: asking for one is a 400 that says so.
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(0))
    code, err = await as_user("bob", "lepton", "api", "clusters", method="POST",
                              body={"team": "finance", "profile": "local", "gpus": 1})
    assert code == 400, err
    assert "GPU" in err["message"] and "\n" not in err["message"]
    _, listing = await as_user("bob", "lepton", "api", "clusters")
    assert listing == {"clusters": []}


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    ({"team": "medical", "colour": "red"}, 400, "unknown field 'colour'"),
    ({"team": "medical", "workers": {"cloud": -1}}, 400, "workers.cloud: must be a whole number from 0 to 256, got -1"),
    ({"team": "medical", "workers": {"fog": 1}}, 400, "workers: unknown key 'fog' (keys: cloud, edge)"),
    ({"team": "medical", "gpus": "two"}, 400, "gpus: a whole number from 0 to 64, or auto"),
    ({"team": "medical", "gpus": 65}, 400, "gpus: a whole number from 0 to 64, or auto (every free GPU); got 65"),
    ({"team": "medical", "threads": 1.5}, 400, "threads: must be a whole number from 1 to 256"),
    ({"team": "medical", "memory": "lots"}, 400, "memory: a size such as 4GiB, from 1MiB to 1PiB; got 'lots'"),
    ({"team": "medical", "memory": "2PiB"}, 400, "memory: a size such as 4GiB"),
    ({"team": 7}, 400, "team: wrong type: a team name, got a number"),
    ({"team": "medical", "name": "../../etc"}, 400, "name:"),
    ({"team": "physics"}, 400, "unknown team 'physics'"),
    ({"profile": "local"}, 400, "missing field 'team'"),
    ("x" * 70_000, 400, "over 64 KiB"),
])
async def test_bad_bodies_are_400_never_500(as_user, body, status, words):
    code, err = await as_user("alice", "lepton", "api", "clusters", method="POST", body=body)
    assert code == status, err
    assert words in err["message"] and "\n" not in err["message"], err


@pytest.mark.parametrize("body, words", [
    ({"site": "cloud", "workers": 257}, "workers: must be a whole number from 0 to 256, got 257"),
    ({"site": "cloud", "workers": True}, "workers: must be a whole number from 0 to 256, got True"),
    ({"site": "cloud"}, "missing field 'workers'"),
    ({"site": "cloud", "workers": 1, "gpus": 1}, "unknown field 'gpus' (fields: site, workers)"),
])
async def test_bad_scale_bodies_name_the_field(as_user, body, words):
    code, err = await as_user("alice", "lepton", "api", "clusters", "no-such-cluster", method="PATCH", body=body)
    assert code == 400 and words in err["message"], err


async def test_profiles_answer_carries_the_request_schema(as_user):
    """The form's bounds come from the server: the schema the create route checks bodies against."""
    from lepton_lab.schemas import check_schema, problem

    code, reply = await as_user("vera", "lepton", "api", "profiles")
    assert code == 200 and {p["name"] for p in reply["profiles"]} >= {"local", "hybrid"}
    request, site = reply["request"], reply["site"]
    check_schema(request)
    check_schema(site)
    fields = request["properties"]
    assert fields["workers"]["properties"]["cloud"]["maximum"] == 256
    assert (fields["threads"]["minimum"], fields["threads"]["maximum"]) == (1, 256)
    assert "pattern" in fields["memory"] and request["required"] == ["team"]
    assert problem({"team": "medical", "workers": {"edge": 2}, "memory": "4GiB", "gpus": "auto"}, request) is None
    assert problem({"team": "medical", "gpus": 65}, request)[0] == "gpus"
    assert problem({"team": "medical", "workers": {"edge": 300}}, request) == (
        "workers.edge", "must be a whole number from 0 to 256, got 300")
    for profile in reply["profiles"]:
        for s in profile["sites"]:
            assert problem(s, site) is None, (profile["name"], s)


async def test_profiles_answer_serves_the_bounds_the_sidebar_relies_on(as_user):
    """The sidebar's count fields take min, max, step and refusal words from these schemas (and its
    jest tests from a copy of them): a server change that drops or moves a bound fails here."""
    import json
    from pathlib import Path

    from lepton_lab.schemas import problem

    code, reply = await as_user("alice", "lepton", "api", "profiles")
    assert code == 200
    fields = reply["request"]["properties"]
    counts = {"workers.cloud": fields["workers"]["properties"]["cloud"],
              "workers.edge": fields["workers"]["properties"]["edge"],
              "threads": fields["threads"], "scale workers": reply["scale"]["properties"]["workers"]}
    for name, schema in counts.items():
        assert "integer" in schema["type"] and "{value!r}" in schema["x-reason"], name
        assert isinstance(schema["minimum"], int) and isinstance(schema["maximum"], int), name
    gpus = fields["gpus"]
    assert {"const": "auto"} in gpus["anyOf"] and "{value!r}" in gpus["x-reason"]
    [whole] = [b for b in gpus["anyOf"] if b.get("type") == "integer"]
    assert (whole["minimum"], whole["maximum"]) == (0, 64)
    # The words the form shows for an out-of-bounds value are the ones the routes refuse it with.
    assert problem({"site": "edge", "workers": -1}, reply["scale"]) == (
        "workers", "must be a whole number from 0 to 256, got -1")
    assert problem({"team": "medical", "gpus": 65}, reply["request"]) == (
        "gpus", "a whole number from 0 to 64, or auto (every free GPU); got 65")
    fixture = Path(__file__).parents[2] / "extension" / "src" / "__tests__" / "fixtures" / "served-schemas.json"
    copy = json.loads(fixture.read_text())
    for field in ("workers", "gpus", "threads"):
        assert copy["request"]["properties"][field] == fields[field], (
            f"the served {field} changed: copy the schemas into {fixture.name} for the sidebar's tests")
    assert copy["scale"] == reply["scale"], f"the served scale schema changed: copy it into {fixture.name}"


@pytest.mark.parametrize("path", [
    ["clusters", "..", "..", "etc"], ["clusters", "%2e%2e"], ["clusters", "nope"],
    ["clusters", "nope", "allocation"], ["clusters", "a" * 200],
])
async def test_unknown_or_traversing_ids_are_404(as_user, path):
    code, err = await as_user("admin", "lepton", "api", *path)
    assert code == 404


async def test_stream_pushes_snapshots(as_user, jp_ws_fetch, tokens):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "workers": {"cloud": 1, "edge": 1}})
    assert code == 201
    try:
        ws = await jp_ws_fetch("lepton", "api", "clusters", c["id"], "stream",
                               headers={"Authorization": f"token {tokens['alice']}"},
                               params={"interval": "0.2"})
        import json

        first = json.loads(await asyncio.wait_for(ws.read_message(), 20))
        second = json.loads(await asyncio.wait_for(ws.read_message(), 20))
        assert first["totals"]["workers"] == 2 and second["time"] > first["time"]
        ws.close()
        from tornado.httpclient import HTTPClientError
        from tornado.websocket import WebSocketClosedError

        with pytest.raises((HTTPClientError, WebSocketClosedError)):
            ws = await jp_ws_fetch("lepton", "api", "clusters", c["id"], "stream",
                                   headers={"Authorization": f"token {tokens['bob']}"})
            await asyncio.wait_for(ws.read_message(), 5)
    finally:
        await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")
