"""Stopped clusters: why and when they stopped, kept across server restarts, removable."""

import json

import pytest

RUNNING_BEFORE = {
    "id": "0a1b2c3d4e5f", "name": "ward", "owner": "alice", "team": "medical", "profile": "local",
    "created": "2026-01-02T03:04:05+00:00", "status": "running",
    "scheduler_address": "tls://127.0.0.1:45678", "dashboard_link": "http://127.0.0.1:45679/status",
    "cost_per_hour": 0.0, "tls": True, "ca_dir": "",
    "sites": [{"name": "cloud", "kind": "cloud", "workers": 1, "gpus": 0, "threads": 1,
               "memory": "1 GiB", "cost_per_hour": 0.0}],
}


@pytest.fixture
def jp_server_config(jp_server_config, lepton_home):
    # What a server that went away while "ward" ran left behind.
    (lepton_home / "clusters.json").write_text(json.dumps({RUNNING_BEFORE["id"]: RUNNING_BEFORE}))
    return jp_server_config


async def test_a_cluster_running_when_the_server_stopped_is_marked_stopped(as_user):
    code, listing = await as_user("alice", "lepton", "api", "clusters")
    assert code == 200
    [ward] = listing["clusters"]
    assert ward["name"] == "ward" and ward["status"] == "stopped"
    assert ward["stopped_reason"] == "the Jupyter server stopped"
    assert ward["stopped_at"].startswith("20") and "T" in ward["stopped_at"]
    assert ward["dashboard_link"] == "" and ward["scheduler_address"] == ""
    # Acting on it says why it is stopped, in one line.
    code, err = await as_user("alice", "lepton", "api", "clusters", ward["id"], method="PATCH",
                              body={"site": "cloud", "workers": 2})
    assert code == 409 and "the Jupyter server stopped" in err["message"]
    # The finance analyst may not remove it; its owner may.
    code, _ = await as_user("bob", "lepton", "api", "clusters", ward["id"], method="DELETE")
    assert code == 404
    code, _ = await as_user("alice", "lepton", "api", "clusters", ward["id"], method="DELETE")
    assert code == 204
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    assert listing == {"clusters": []}


async def test_default_names_and_the_record_left_when_the_server_stops(as_user, jp_serverapp, lepton_home):
    body = {"team": "medical", "profile": "local", "workers": {"cloud": 1, "edge": 0}}
    code, first = await as_user("alice", "lepton", "api", "clusters", method="POST", body=body)
    assert code == 201, first
    assert first["name"] == "local-alice-1"
    # A new cluster named like a stopped one takes its place in the list.
    code, ward = await as_user("alice", "lepton", "api", "clusters", method="POST", body={**body, "name": "ward"})
    assert code == 201, ward
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    assert sorted((c["name"], c["status"]) for c in listing["clusters"]) == [
        ("local-alice-1", "running"), ("ward", "running")]
    code, _ = await as_user("alice", "lepton", "api", "clusters", ward["id"], method="DELETE")
    assert code == 204
    code, second = await as_user("alice", "lepton", "api", "clusters", method="POST", body=body)
    assert code == 201, second
    assert second["name"] == "local-alice-2"

    jp_serverapp.web_app.settings["lepton"].close()
    records = json.loads((lepton_home / "clusters.json").read_text())
    assert {r["name"] for r in records.values()} == {"local-alice-1", "local-alice-2"}
    for record in records.values():
        assert record["status"] == "stopped"
        assert record["stopped_reason"] == "the Jupyter server stopped"
        assert record["stopped_at"] >= record["created"]


@pytest.mark.parametrize("body, words", [
    ({"site": "cloud", "workers": -1}, "workers: must be a whole number from 0 to 256, got -1"),
    ({"site": "cloud", "workers": 1.5}, "workers: must be a whole number from 0 to 256, got 1.5"),
])
async def test_scale_refuses_what_it_would_have_to_change(as_user, body, words):
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "local", "workers": {"cloud": 1, "edge": 0}})
    assert code == 201, c
    code, err = await as_user("alice", "lepton", "api", "clusters", c["id"], method="PATCH", body=body)
    assert code == 400 and err["message"] == words
    code, same = await as_user("alice", "lepton", "api", "clusters", c["id"])
    assert {s["name"]: s["workers"] for s in same["sites"]}["cloud"] == 1


async def test_a_fractional_gpu_count_is_refused(as_user):
    code, err = await as_user("alice", "lepton", "api", "clusters", method="POST",
                              body={"team": "medical", "profile": "local", "gpus": 0.5})
    assert code == 400 and err["message"] == "gpus: a whole number from 0 to 64, or auto (every free GPU); got 0.5"
