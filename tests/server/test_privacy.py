"""A team's privacy ledger over REST: budgets and spending, charges refused past the budget, atomic and audited;
a federated search in a kernel that reaches the server charges the server's ledger, not the kernel's home."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from lepton_lab.ml.privacy import RDPAccountant

NOISE, STEPS = 1.0, 2
DELTA = 1e-5
pytestmark = pytest.mark.timeout(240)


def _eps(runs: int) -> float:
    acc = RDPAccountant()
    acc.step(noise_multiplier=NOISE, sample_rate=1.0, steps=STEPS * runs)
    return float(acc.epsilon(DELTA))


#: Room for three charges of (NOISE, STEPS) on medical/wards, not four.
BUDGET = (_eps(3) + _eps(4)) / 2


@pytest.fixture
def lepton_home(lepton_home):
    policy = lepton_home / "policy.yaml"
    policy.write_text(policy.read_text() + f"privacy:\n  medical: {{epsilon: 50, delta: 1.0e-5}}\n"
                      f"  medical/wards: {{epsilon: {BUDGET!r}, delta: 1.0e-5}}\n")
    return lepton_home


def _charge(what: str, **over):
    return {"dataset": "wards", "noise_multiplier": NOISE, "steps": STEPS, "what": what, **over}


async def test_charges_until_the_budget_then_a_one_line_403(as_user):
    for i in range(3):
        code, spend = await as_user("alice", "lepton", "api", "privacy", "medical", "charge", method="POST",
                                    body=_charge(f"run {i}"))
        assert code == 200, spend
        assert spend["total"] == pytest.approx(_eps(i + 1)) and spend["budget"] == pytest.approx(BUDGET)
    code, err = await as_user("alice", "lepton", "api", "privacy", "medical", "charge", method="POST",
                              body=_charge("run 3"))
    assert code == 403 and "\n" not in err["message"]
    assert f"{_eps(3):.3f} spent on 3 run(s)" in err["message"] and "run 3 would cost" in err["message"]
    code, view = await as_user("alice", "lepton", "api", "privacy", "medical")
    assert code == 200 and view["budget"] == {"epsilon": 50, "delta": DELTA}
    wards = next(d for d in view["datasets"] if d["dataset"] == "wards")
    assert wards["runs"] == 3 and wards["spent"] == pytest.approx(_eps(3)) and wards["budget"] == BUDGET
    code, one = await as_user("vera", "lepton", "api", "privacy", "medical", params={"dataset": "icu"})
    assert code == 200 and one["datasets"] == [{"dataset": "icu", "budget": 50, "delta": DELTA, "spent": 0.0,
                                                "runs": 0, "last": None}]
    _, log = await as_user("admin", "lepton", "api", "audit", params={"resource": "privacy:medical/wards"})
    outcomes = [(e["user"], e["action"], e["outcome"]) for e in log["entries"]]
    assert outcomes.count(("alice", "privacy:spend", "allow")) == 3
    assert ("alice", "privacy:spend", "deny") in outcomes


async def test_concurrent_charges_never_exceed_the_budget(as_user, jp_serverapp):
    answers = await asyncio.gather(*(
        as_user("alice", "lepton", "api", "privacy", "medical", "charge", method="POST", body=_charge(f"c{i}"))
        for i in range(8)))
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * 3 + [403] * 5, answers
    ledger = jp_serverapp.web_app.settings["lepton"].privacy()
    total, entries = ledger.spent("medical", "wards")
    assert len(entries) == 3 and total <= BUDGET
    assert sorted(e["total"] for e in entries) == pytest.approx([_eps(1), _eps(2), _eps(3)])


async def test_wrong_team_and_bad_input(as_user):
    code, err = await as_user("alice", "lepton", "api", "privacy", "nope", "charge", method="POST",
                              body=_charge("x"))
    assert code == 404 and "no team 'nope'" in err["message"]
    code, _ = await as_user("alice", "lepton", "api", "privacy", "nope")
    assert code == 404
    # bob is in finance: medical's data is not his to spend or see.
    code, err = await as_user("bob", "lepton", "api", "privacy", "medical", "charge", method="POST",
                              body=_charge("x"))
    assert code == 403 and "\n" not in err["message"]
    code, _ = await as_user("bob", "lepton", "api", "privacy", "medical")
    assert code == 403
    # vera, a viewer, may see the budget but spend nothing.
    code, _ = await as_user("vera", "lepton", "api", "privacy", "medical", "charge", method="POST",
                            body=_charge("x"))
    assert code == 403
    for body, words in ((_charge("x", noise_multiplier=0), "noise_multiplier"),
                        (_charge("x", sample_rate=1.5), "sample_rate"),
                        (_charge("x", steps=0), "steps"),
                        (_charge("x", steps=2.5), "wrong type"),
                        (_charge("x", dataset="../etc"), "dataset must be"),
                        (_charge("x", epsilon=1), "unknown field"),
                        ({"dataset": "wards", "steps": 1, "what": "x"}, "missing field 'noise_multiplier'"),
                        (_charge("two\nlines"), "one line"),
                        ("not json", "not valid JSON")):
        code, err = await as_user("alice", "lepton", "api", "privacy", "medical", "charge", method="POST",
                                  body=body)
        assert code == 400 and words in err["message"], (body, err)
    code, err = await as_user("alice", "lepton", "api", "privacy", "medical", params={"dataset": "a/b"})
    assert code == 400
    code, view = await as_user("alice", "lepton", "api", "privacy", "medical")
    assert all(d["runs"] == 0 for d in view["datasets"])  # nothing refused was charged


SITES = ["edge-hospital-a", "edge-hospital-b"]
PROFILE = {"name": "rest-hospitals", "sites": [
    {"name": s, "kind": "edge", "workers": 1, "threads": 1, "memory": "512MiB"} for s in SITES]}


async def test_federated_tune_over_rest_charges_the_servers_ledger(jp_serverapp, jp_fetch, jp_http_port,
                                                                   jp_base_url, tokens, tmp_path, monkeypatch):
    import torch
    from torch import nn

    import lepton_lab
    from lepton_lab import session as session_mod
    from lepton_lab.errors import PermissionDenied
    from lepton_lab.rest import RestTransport, ServerInfo

    await jp_fetch("lepton", "api", "whoami", headers={"Authorization": f"token {tokens['alice']}"})
    run = asyncio.to_thread
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)

    def load_site(site):
        part = slice(0, 60) if site == SITES[0] else slice(60, 120)
        return X[part], y[part]

    embedded = session_mod.Session(session_mod.EmbeddedTransport())
    monkeypatch.setattr(session_mod, "_session", embedded)
    handle = await run(lepton_lab.up, PROFILE, name="rest-fed")
    try:
        # From here the kernel has a home of its own, and reaches the server as alice.
        kernel_home = tmp_path / "kernel-home"
        kernel_home.mkdir()
        monkeypatch.setenv("LEPTON_HOME", str(kernel_home))
        server = ServerInfo(f"http://localhost:{jp_http_port}{jp_base_url}", tokens["alice"], "test")
        monkeypatch.setattr(session_mod, "_session", session_mod.Session(RestTransport(server)))

        def tune(trials):
            torch.manual_seed(0)
            return lepton_lab.tune("federate", model=nn.Sequential(nn.Linear(4, 1)), loader=load_site, sites=SITES,
                                   eval_data=(X, y), space="lr=float:0.05..0.5:log", team="medical",
                                   dataset="wards", study="fed-rest", trials=trials, rounds=STEPS,
                                   noise_multiplier=NOISE, clip=1.0, secure=False, progress=False,
                                   client=handle.client)

        result = await run(tune, 5)
        tuning = result.lineage["tuning"]
        assert tuning["ran_now"] == 3 and "refused" in tuning["stopped"] and "3 run(s)" in tuning["stopped"]
        assert tuning["budget"] == pytest.approx(BUDGET) and tuning["epsilon_total"] == pytest.approx(_eps(3))
        services = jp_serverapp.web_app.settings["lepton"]
        total, entries = services.privacy().spent("medical", "wards")
        assert len(entries) == 3 and {e["user"] for e in entries} == {"alice"}
        assert total == pytest.approx(_eps(3))
        assert (services.home / "studies" / "medical" / "fed-rest.log").is_file()
        assert not (kernel_home / "privacy").exists() and not (kernel_home / "studies").exists()
        with pytest.raises(PermissionDenied, match="3 run\\(s\\)"):
            await run(tune, 6)
        lines = [json.loads(x) for x in services.audit.path.read_text().splitlines()]
        spends = [x for x in lines if x["action"] == "privacy:spend" and x["resource"] == "privacy:medical/wards"]
        assert [x["outcome"] for x in spends] == ["allow"] * 3 + ["deny", "deny"]
    finally:
        monkeypatch.setattr(session_mod, "_session", embedded)
        await run(lepton_lab.down, "rest-fed")
        monkeypatch.setattr(session_mod, "_session", None)


async def test_both_doors_answer_the_same_ledger(as_user, jp_http_port, jp_base_url, tokens):
    from lepton_lab.errors import ConfigError, PermissionDenied
    from lepton_lab.rest import RestTransport, ServerInfo
    from lepton_lab.session import EmbeddedTransport

    run = asyncio.to_thread
    rest = RestTransport(ServerInfo(f"http://localhost:{jp_http_port}{jp_base_url}", tokens["alice"], "test"))
    await as_user("alice", "lepton", "api", "whoami")  # the server listens
    spend = await run(rest.privacy_charge, "medical", "wards", noise_multiplier=NOISE, sample_rate=1.0,
                      steps=STEPS, what="from the kernel")
    assert spend["total"] == pytest.approx(_eps(1))
    # In-process (this server's home and policy, as the local user), the same ledger and the same verbs.
    local = EmbeddedTransport()
    assert await run(local.privacy, "medical") == await run(rest.privacy, "medical")
    await run(lambda: local.privacy_charge("medical", "wards", noise_multiplier=NOISE, sample_rate=1.0,
                                           steps=STEPS, what="in-process"))
    one = await run(rest.privacy, "medical", "wards")
    assert one["datasets"][0]["runs"] == 2 and one["datasets"][0]["spent"] == pytest.approx(_eps(2))
    for door in (rest, local):
        with pytest.raises(ConfigError, match="dataset must be"):
            await run(door.privacy, "medical", "no/such")
    with pytest.raises(PermissionDenied, match="refused"):
        await run(lambda: rest.privacy_charge("medical", "wards", noise_multiplier=0.3, sample_rate=1.0,
                                              steps=50, what="too much"))
