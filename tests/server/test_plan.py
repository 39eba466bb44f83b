"""``GET clusters/{id}/plan``: the planner's choice over a server cluster's live allocation, for its readers."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(180)


async def test_the_plan_of_a_job_on_a_cluster_and_bad_questions(as_user, jp_fetch, tokens):
    # Bring-up may take a while on a busy machine: a longer wait than as_user's.
    r = await jp_fetch("lepton", "api", "clusters", method="POST", request_timeout=120,
                       headers={"Authorization": f"token {tokens['alice']}"},
                       body=json.dumps({"team": "medical", "workers": {"cloud": 1, "edge": 1}}))
    assert r.code == 201
    c = json.loads(r.body)
    plan = ("lepton", "api", "clusters", c["id"], "plan")
    code, choice = await as_user("alice", *plan, params={"kind": "train", "workers": "1"})
    assert code == 200, choice
    assert choice["kind"] == "train" and choice["site"] in ("cloud", "edge") and choice["line"].startswith("planner: ")
    assert [p["workers"] for p in choice["picks"]] == [1] and "cost_per_hour" in choice
    # Data that may not move pins the job to its site.
    code, pinned = await as_user("alice", *plan, params={"kind": "train", "data_site": "edge", "data_stays": "1"})
    assert code == 200 and pinned["site"] == "edge" and pinned["data_local"] is True
    # A viewer of the team may ask too: nothing starts.
    code, _ = await as_user("vera", *plan, params={"kind": "serve"})
    assert code == 200
    # What cannot fit is a 400 naming the constraint; bad input a 400 naming the argument.
    for params, words in (({"kind": "train", "workers": "5"}, "capacity:"),
                          ({"kind": "bake"}, "kind must be one of"),
                          ({"workers": "two"}, "workers must be a whole number"),
                          ({"memory": "lots"}, "memory must be bytes"),
                          ({"data_stays": "maybe"}, "data_stays must be"),
                          ({"sites": "mars"}, "sites: the cluster has no site 'mars'"),
                          ({"colour": "red"}, "unknown argument 'colour'")):
        code, err = await as_user("alice", *plan, params=params)
        assert code == 400 and words in err["message"] and "\n" not in err["message"], (params, err)
    # Another team's cluster does not exist for bob.
    code, _ = await as_user("bob", *plan, params={"kind": "train"})
    assert code == 404
    code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")
    assert code == 204
