"""Quotas: what a user or team may hold at once, and the check a request must pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lepton_lab.errors import QuotaExceeded

QUOTA_FIELDS = ("max_gpus", "max_workers", "max_clusters")
#: Fields only a team's quota takes: money its clusters may cost, minutes a cluster may sit idle.
TEAM_FIELDS = ("spend_cap", "spend_period", "idle_timeout")
#: What a spend cap counts: this calendar month's spend (UTC; the default) or everything ever spent.
SPEND_PERIODS = ("month", "total")


@dataclass(frozen=True)
class Quota:
    """Limits on what a user or team may hold at once; ``None`` means unlimited."""

    max_gpus: int | None = None
    max_workers: int | None = None
    max_clusters: int | None = None
    #: Teams only: what the team's clusters may cost (worker-hours × cost per worker-hour, summed).
    spend_cap: float | None = None
    #: Teams only: minutes a cluster may run with no task and no client activity before it is stopped.
    idle_timeout: float | None = None
    #: Teams only: what ``spend_cap`` counts, ``month`` (the calendar month, UTC) or ``total``; None is month.
    spend_period: str | None = None

    def tighter(self, other: Quota) -> Quota:
        """The field-by-field smaller of two quotas (``None`` loses to any number)."""
        merged: dict[str, Any] = {}
        for name in QUOTA_FIELDS + TEAM_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "spend_period":  # not a limit: a team's own setting
                merged[name] = mine or theirs
                continue
            merged[name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return Quota(**merged)


@dataclass(frozen=True)
class Usage:
    """Resources held (or asked for): GPUs, workers and clusters."""

    gpus: int = 0
    workers: int = 0
    clusters: int = 0



class QuotaSource(Protocol):
    """What :func:`check_quota` asks of a policy (:class:`~lepton_lab.security.policy.Policy`)."""

    @property
    def source(self) -> str: ...

    def quota_for(self, user: str | None = None, team: str | None = None) -> Quota: ...


def check_quota(
    policy: QuotaSource,
    user: str,
    team: str | None,
    usage_user: Usage,
    usage_team: Usage,
    request: Usage,
) -> None:
    """Raise QuotaExceeded, with the numbers, if ``request`` would take the user or team over quota.

    Only what the request asks for is checked, so lowering a quota never
    blocks releasing or using resources already held.
    """
    checks = [("user", user, policy.quota_for(user=user), usage_user, f"quotas.users.{user}")]
    if team is not None:
        checks.append(("team", team, policy.quota_for(team=team), usage_team, f"quotas.teams.{team}"))
    for kind, name, quota, usage, field_path in checks:
        for resource, limit_field, noun in (
            ("gpus", "max_gpus", "GPU"),
            ("workers", "max_workers", "worker"),
            ("clusters", "max_clusters", "cluster"),
        ):
            asked, held, limit = (
                getattr(request, resource),
                getattr(usage, resource),
                getattr(quota, limit_field),
            )
            if asked <= 0 or limit is None or held + asked <= limit:
                continue
            raise QuotaExceeded(
                f"{kind} {name} may hold {_count(limit, noun)}; {held} {'is' if held == 1 else 'are'} "
                f"in use and this request asks for {asked} (release some, or ask an admin to raise "
                f"{field_path}.{limit_field} in {policy.source})"
            )



def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"



__all__ = ["QUOTA_FIELDS", "TEAM_FIELDS", "Quota", "QuotaSource", "Usage", "check_quota"]
