"""Spend metering, the policy's spend cap and idle timeout, and a profile's idle timeout: values and errors."""

import pytest

from lepton_lab.cluster.profiles import profile_from_dict
from lepton_lab.errors import ConfigError, QuotaExceeded
from lepton_lab.security.policy import parse_policy_text
from lepton_lab.security.spend import Spend, SpendMeter, check_spend_cap

BASE = """
version: 1
teams: [medical, finance]
members: {{alice: {{medical: analyst}}}}
quotas:
{quotas}
"""


def _policy(quotas: str):
    return parse_policy_text(BASE.format(quotas=quotas), source="policy.yaml")


def test_team_quotas_take_a_spend_cap_and_an_idle_timeout():
    p = _policy("  teams: {medical: {spend_cap: 12.5, idle_timeout: 30}}\n  default_team: {spend_cap: 100}")
    assert p.quota_for(team="medical").spend_cap == 12.5 and p.quota_for(team="medical").idle_timeout == 30
    assert p.quota_for(team="finance").spend_cap == 100 and p.quota_for(team="finance").idle_timeout is None
    # A user's quota has neither; with a team the team's applies.
    assert p.quota_for(user="alice", team="medical").spend_cap == 12.5


@pytest.mark.parametrize("quotas, message", [
    ("  teams: {medical: {spend_cap: -1}}", "quotas.teams.medical.spend_cap: must be a number >= 0"),
    ("  teams: {medical: {spend_cap: lots}}", "quotas.teams.medical.spend_cap: must be a number >= 0"),
    ("  teams: {medical: {spend_cap: true}}", "quotas.teams.medical.spend_cap: must be a number >= 0"),
    ("  teams: {medical: {idle_timeout: 0}}", "quotas.teams.medical.idle_timeout: must be a number > 0 (minutes)"),
    ("  default_team: {idle_timeout: .inf}", "quotas.default_team.idle_timeout: must be a number > 0"),
    ("  users: {alice: {spend_cap: 5}}", "quotas.users.alice.spend_cap: a team's limit; set it under quotas.teams"),
    ("  default_user: {idle_timeout: 5}", "quotas.default_user.idle_timeout: a team's limit"),
    ("  teams: {medical: {spend_capp: 5}}", "did you mean 'spend_cap'?"),
    ("  teams: {medical: {spend_period: week}}", "quotas.teams.medical.spend_period: must be month or total"),
    ("  users: {alice: {spend_period: month}}", "quotas.users.alice.spend_period: a team's limit"),
])
def test_bad_spend_and_idle_quotas_are_one_line_errors(quotas, message):
    with pytest.raises(ConfigError) as info:
        _policy(quotas)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("policy.yaml: ")


def test_a_profile_sets_an_idle_timeout_and_bad_ones_are_one_line():
    sites = [{"name": "cloud", "kind": "cloud"}]
    assert profile_from_dict("p", {"sites": sites, "idle_timeout": 15}, "profiles.yaml: profiles.p").idle_timeout == 15
    assert profile_from_dict("p", {"sites": sites}, "x").idle_timeout is None
    for bad in (0, -3, "soon", True):
        with pytest.raises(ConfigError, match=r"^profiles.yaml: profiles.p.idle_timeout: minutes, a number > 0"):
            profile_from_dict("p", {"sites": sites, "idle_timeout": bad}, "profiles.yaml: profiles.p")


def test_spend_is_worker_hours_times_cost_and_survives_a_restart(tmp_path):
    now = [1000.0]
    meter = SpendMeter(tmp_path / "spend.json", clock=lambda: now[0])
    meter.start("c1")
    meter.start("c2")
    now[0] += 2 * 3600
    meter.tick("c1", "medical", workers=3, cost_per_hour=1.5)  # 3 workers at 0.5 each
    meter.tick("c2", "medical", workers=1, cost_per_hour=2.0)
    now[0] += 1800
    meter.tick("c1", "medical", workers=1, cost_per_hour=0.5)  # scaled down for the last half hour
    assert meter.cluster("c1") == Spend(spend=3.25, worker_hours=6.5)
    assert meter.team("medical") == Spend(spend=7.25, worker_hours=8.5)
    meter.forget("c1")  # a removed cluster's own line goes; what it cost stays with the team
    again = SpendMeter(tmp_path / "spend.json")
    assert again.team("medical") == Spend(spend=7.25, worker_hours=8.5) and again.cluster("c1") == Spend()
    assert again.team("finance") == Spend()


def test_the_cap_refuses_in_one_line_naming_the_cap_and_the_spend():
    check_spend_cap("medical", Spend(3.0, 6.0), None)
    check_spend_cap("medical", Spend(3.0, 6.0), 3.5)
    with pytest.raises(QuotaExceeded) as info:
        check_spend_cap("medical", Spend(3.5, 7.0), 3.5, "policy.yaml")
    msg = str(info.value)
    assert "team medical has spent 3.50 of its spend cap 3.50" in msg and "quotas.teams.medical.spend_cap" in msg
    assert "\n" not in msg


def test_the_spend_period_is_the_month_unless_the_policy_says_total():
    p = _policy("  teams: {medical: {spend_cap: 10, spend_period: total}}\n  default_team: {spend_cap: 5}")
    assert p.quota_for(team="medical").spend_period == "total"
    assert p.quota_for(team="finance").spend_period is None  # the month
    assert p.quota_for(user="alice", team="medical").spend_period == "total"


def _utc(text: str) -> float:
    import calendar
    import time

    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M")))


def test_a_teams_monthly_spend_starts_again_each_calendar_month_utc(tmp_path):
    now = [_utc("2026-01-31T22:00")]
    meter = SpendMeter(tmp_path / "spend.json", clock=lambda: now[0])
    meter.start("c1")
    now[0] += 3600  # 23:00, still January: 2 workers at 2.0/h for an hour
    meter.tick("c1", "medical", 2, 2.0)
    assert meter.month() == "2026-01" and meter.team("medical", "month") == Spend(2.0, 2.0)
    now[0] += 2 * 3600  # 01:00 on 1 February: the tick is counted in the month it ends in
    meter.tick("c1", "medical", 2, 2.0)
    assert meter.month() == "2026-02" and meter.team("medical", "month") == Spend(4.0, 4.0)
    assert meter.team("medical") == meter.team("medical", "total") == Spend(6.0, 6.0)
    assert meter.team("finance", "month") == Spend()
    again = SpendMeter(tmp_path / "spend.json", clock=lambda: now[0])
    assert again.team("medical", "month") == Spend(4.0, 4.0) and again.months["medical"]["2026-01"] == Spend(2.0, 2.0)
    now[0] = _utc("2026-03-01T00:00")
    assert again.team("medical", "month") == Spend() and again.team("medical").spend == 6.0


def test_a_monthly_cap_says_so_and_when_it_starts_again():
    check_spend_cap("medical", Spend(3.0, 6.0), 3.5, "policy.yaml", "month", "2026-02")
    with pytest.raises(QuotaExceeded) as info:
        check_spend_cap("medical", Spend(3.5, 7.0), 3.5, "policy.yaml", "month", "2026-02")
    msg = str(info.value)
    assert "team medical has spent 3.50 of its monthly spend cap 3.50 in 2026-02 (UTC" in msg
    assert "until next month" in msg and "\n" not in msg


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "86400"])
def test_a_bad_watch_interval_is_one_line(monkeypatch, raw):
    from lepton_lab import config

    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", raw)
    with pytest.raises(ConfigError, match=r"^LEPTON_WATCH_INTERVAL: seconds from 0 to 3600, got"):
        config.watch_interval()
    monkeypatch.setenv("LEPTON_WATCH_INTERVAL", "2.5")
    assert config.watch_interval() == 2.5
