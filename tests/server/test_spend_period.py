"""A team's spend cap counts its spend_period: the calendar month (UTC) by default, or everything ever spent."""

from __future__ import annotations

import calendar
import time

import pytest

from lepton_lab.services.watch import sweep

PROFILES = """\
profiles:
  priced:
    sites:
      - {name: cloud, kind: cloud, workers: 1, memory: 512MiB, cost_per_hour: 2.0}
"""

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def jp_server_config(jp_server_config, lepton_home, monkeypatch):
    policy = lepton_home / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        "quotas:\n", "quotas:\n  teams:\n    medical: {spend_cap: 3.0}\n"
                     "    finance: {spend_cap: 3.0, spend_period: total}\n"))
    (lepton_home / "profiles.yaml").write_text(PROFILES)
    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", "3600")
    return jp_server_config


def _utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M")))


async def test_a_monthly_cap_starts_again_next_month_and_a_total_one_does_not(as_user, jp_serverapp):
    services = jp_serverapp.web_app.settings["lepton"]
    now = [_utc("2026-03-31T20:00")]
    services.spend.clock = lambda: now[0]
    ids = {}
    for who, team in (("alice", "medical"), ("fiona", "finance")):
        code, c = await as_user(who, "lepton", "api", "clusters", method="POST",
                                body={"team": team, "profile": "priced", "name": f"{team}-1"})
        assert code == 201, c
        ids[team] = c["id"]
    now[0] += 2 * 3600  # 22:00, still March: 2 hours at 2.0/h each
    sweep(services)
    refused = {}
    for who, team in (("alice", "medical"), ("fiona", "finance")):
        code, err = await as_user(who, "lepton", "api", "clusters", method="POST",
                                  body={"team": team, "profile": "priced", "name": f"{team}-2"})
        assert code == 403, err
        refused[team] = err["message"]
        code, _ = await as_user(who, "lepton", "api", "clusters", ids[team], method="DELETE")
        assert code == 204
    assert "team medical has spent 4.00 of its monthly spend cap 3.00 in 2026-03 (UTC" in refused["medical"]
    assert "team finance has spent 4.00 of its spend cap 3.00 (" in refused["finance"]
    _, me = await as_user("alice", "lepton", "api", "whoami")
    assert me["spend"]["medical"] == {"spend": 4.0, "worker_hours": 2.0, "spend_cap": 3.0, "spend_period": "month",
                                      "month": "2026-03"}
    now[0] = _utc("2026-04-01T00:30")  # April, UTC: medical's cap counts again from zero; finance's does not
    _, me = await as_user("alice", "lepton", "api", "whoami")
    assert me["spend"]["medical"]["spend"] == 0.0 and me["spend"]["medical"]["month"] == "2026-04"
    _, fin = await as_user("fiona", "lepton", "api", "whoami")
    assert fin["spend"]["finance"] == {"spend": 4.0, "worker_hours": 2.0, "spend_cap": 3.0, "spend_period": "total",
                                       "month": None}
    code, c = await as_user("alice", "lepton", "api", "clusters", method="POST",
                            body={"team": "medical", "profile": "priced", "name": "april"})
    assert code == 201, c
    code, err = await as_user("fiona", "lepton", "api", "clusters", method="POST",
                              body={"team": "finance", "profile": "priced", "name": "april"})
    assert code == 403 and "of its spend cap 3.00" in err["message"] and "monthly" not in err["message"]
    _, listing = await as_user("alice", "lepton", "api", "clusters")
    row = next(r for r in listing["clusters"] if r["name"] == "april")
    assert (row["team_spend"], row["spend_period"], row["spend_month"]) == (0.0, "month", "2026-04")
