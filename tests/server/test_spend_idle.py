"""Spend per team (worker-hours × cost) in who-am-I and the cluster list, the spend cap, and idle shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest
from distributed import Client

from lepton_lab.security.audit import AuditLog
from lepton_lab.security.policy import parse_policy_text
from lepton_lab.security.spend import SpendMeter
from lepton_lab.security.tokens import TokenStore
from lepton_lab.services import Actor, Services
from lepton_lab.services.watch import sweep

PROFILES = """\
profiles:
  priced:
    sites:
      - {name: cloud, kind: cloud, workers: 1, memory: 512MiB, cost_per_hour: 2.0}
      - {name: edge, kind: edge, workers: 1, memory: 512MiB, cost_per_hour: 0.5}
"""

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def jp_server_config(jp_server_config, lepton_home, monkeypatch):
    policy = lepton_home / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        "quotas:\n", "quotas:\n  teams:\n    medical: {spend_cap: 4.0}\n"))
    (lepton_home / "profiles.yaml").write_text(PROFILES)
    # The watch's own passes stay out of the way: the test sweeps when it means to.
    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", "3600")
    return jp_server_config


async def test_spend_grows_with_worker_hours_shows_in_whoami_and_the_cap_refuses(as_user, jp_serverapp,
                                                                                  lepton_home):
    services = jp_serverapp.web_app.settings["lepton"]
    now = [1_000_000.0]
    services.spend.clock = lambda: now[0]
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "priced"})
    assert code == 201, c
    now[0] += 2 * 3600  # two hours of 2 workers costing 2.5 per hour together
    sweep(services)
    code, me = await as_user("alice", "lepton", "api", "whoami")
    assert me["spend"]["medical"] == {"spend": 5.0, "worker_hours": 4.0, "spend_cap": 4.0, "spend_period": "month",
                                      "month": "1970-01"}
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    [row] = listing["clusters"]
    assert (row["spend"], row["worker_hours"], row["team_spend"], row["spend_cap"]) == (5.0, 4.0, 5.0, 4.0)
    # Past the cap, a new cluster is refused in one line naming the cap and the spend.
    code, err = await as_user("alice", "lepton", "api", "clusters", method="POST",
                              body={"team": "medical", "profile": "priced", "name": "second"})
    assert code == 403 and "\n" not in err["message"]
    assert "team medical has spent 5.00 of its monthly spend cap 4.00 in 1970-01" in err["message"]
    denied = services.audit.entries(user="alice", action="clusters:create", outcome="deny")
    assert denied and "spend cap" in denied[-1]["reason"]
    # Removing the cluster does not refund its team; the total is on disk.
    code, _ = await as_user("alice", "lepton", "api", "clusters", c["id"], method="DELETE")
    assert code == 204
    _, me = await as_user("alice", "lepton", "api", "whoami")
    assert me["spend"]["medical"]["spend"] == 5.0
    assert SpendMeter(lepton_home / "spend.json").team("medical").spend == 5.0


async def test_lepton_clusters_shows_what_each_cluster_and_the_team_spent(jp_serverapp, jp_fetch, jp_http_port,
                                                                          jp_base_url, tokens, monkeypatch,
                                                                          capsys):
    from IPython.core.interactiveshell import InteractiveShell

    import lepton_lab
    from lepton_lab import session as session_mod
    from lepton_lab.rest import RestTransport, ServerInfo

    server = ServerInfo(f"http://localhost:{jp_http_port}{jp_base_url}", tokens["alice"], "test")
    monkeypatch.setattr(session_mod, "_session", session_mod.Session(RestTransport(server)))
    services = jp_serverapp.web_app.settings["lepton"]
    now = [1_000_000.0]
    services.spend.clock = lambda: now[0]
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "lepton_lab")
    try:
        await asyncio.to_thread(lepton_lab.up, "priced", name="metered")
        now[0] += 3600
        sweep(services)
        capsys.readouterr()
        await asyncio.to_thread(shell.run_line_magic, "lepton", "clusters")
        out = capsys.readouterr().out
        head, row = out.splitlines()[:2]
        assert head.split()[-2:] == ["cost", "spent"] and row.split()[-2:] == ["$2.50/h", "$2.50"]
        assert "team medical has spent $2.50 of its cap $4.00 in 1970-01 (UTC)" in out
    finally:
        await asyncio.to_thread(lepton_lab.down, all=True)
        monkeypatch.setattr(session_mod, "_session", None)


async def test_whoami_shows_spend_for_each_team_without_a_cap(as_user):
    _, me = await as_user("bob", "lepton", "api", "whoami")
    assert me["spend"] == {"finance": {"spend": 0.0, "worker_hours": 0.0, "spend_cap": None, "spend_period": "month",
                                       "month": time.strftime("%Y-%m", time.gmtime())}}


# --------------------------------------------------------------------------- idle shutdown

POLICY = """
version: 1
teams: [medical]
members: {alice: {medical: analyst}}
quotas:
  teams: {medical: {idle_timeout: 0.05}}
"""


@pytest.fixture
def services(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", "3600")
    s = Services(parse_policy_text(POLICY, source="policy.yaml"), home=tmp_path, tls=False,
                 audit=AuditLog(tmp_path / "audit.jsonl"), tokens=TokenStore(tmp_path / "tokens.json"),
                 templates_dir=tmp_path / "templates")
    yield s
    s.close()


def test_an_idle_cluster_is_stopped_with_its_reason_and_a_busy_one_is_not(services):
    alice = Actor("alice")
    one_worker = {"cloud": 1, "edge": 0}
    idle = services.create_cluster(alice, team="medical", profile="local", name="idle", workers=one_worker)
    busy = services.create_cluster(alice, team="medical", profile="local", name="busy", workers=one_worker)
    with Client(busy.address, set_as_default=False) as client:
        task = client.submit(time.sleep, 60, pure=False)
        end = time.monotonic() + 60
        while idle.id not in sweep(services):  # 3 s of idleness, read from the scheduler
            assert time.monotonic() < end, "the idle cluster was never stopped"
            time.sleep(0.5)
        assert busy in services.manager.list() and idle not in services.manager.list()
        task.cancel()
    record = services.records[idle.id]
    assert record["status"] == "stopped" and record["scheduler_address"] == ""
    reason = record["stopped_reason"]
    assert reason.startswith("stopped after ") and "no task and no client activity" in reason
    assert "idle_timeout 0.05 min, the policy's quota for team medical" in reason and "\n" not in reason
    # The sidebar lists it with its reason; acting on it says why it is stopped.
    [shown] = [c for c in services.visible_clusters(alice) if c["id"] == idle.id]
    assert shown["status"] == "stopped" and shown["stopped_reason"] == reason
    [line] = services.audit.entries(user="lepton-server", action="clusters:delete")
    assert line["resource"] == f"clusters:{idle.id}" and line["reason"] == reason
    assert line["detail"]["owner"] == "alice"
    assert services.records[busy.id]["status"] == "running"


def test_a_profile_idle_timeout_applies_and_activity_resets_it(services):
    alice = Actor("alice")
    profile = {"name": "sleepy", "idle_timeout": 0.02,  # 1.2 s, below the team's 3 s
               "sites": [{"name": "cloud", "kind": "cloud", "workers": 1, "memory": "512MiB"}]}
    c = services.create_cluster(alice, team="medical", profile=profile, name="sleepy")
    with Client(c.address, set_as_default=False) as client:
        for _ in range(4):  # work every 0.5 s: never idle for 1.2 s
            assert client.submit(sum, [1, 2], pure=False).result() == 3
            assert sweep(services) == []
            time.sleep(0.5)
    end = time.monotonic() + 60
    while c.id not in sweep(services):
        assert time.monotonic() < end
        time.sleep(0.3)
    assert "(idle_timeout 0.02 min, profile sleepy)" in services.records[c.id]["stopped_reason"]
