"""Teams, roles, permissions and quotas: the policy file and the questions asked of it.

The policy is a YAML file (``config.policy_path()``)::

    version: 1
    teams: [medical, finance]
    roles:    {auditor: [audit:read, clusters:read]}   # adds to / redefines built-ins
    members:  {alice: {medical: analyst}, root: {"*": admin}}
    groups:   {hub-medical: {medical: analyst}}          # JupyterHub groups
    quotas:
      teams: {finance: {max_gpus: 2, max_workers: 16, max_clusters: 4}}
      users: {bob: {max_clusters: 1}}
      default_user: {max_gpus: 1, max_workers: 8, max_clusters: 2}
    terminals: [admin]
    trusted: [root]          # may run code as the server's account on a shared server

A user's permissions in a team are the union of every role they hold there,
directly or through a group, so a group can only add rights. ``roles_of``
reports the highest-ranked of those roles for display. Analysts act on their
own clusters only; ``allows(..., owner=...)`` lets leads and admins act on
anyone's. ``terminals:use`` is granted by the ``terminals`` list alone, so
there is one place to read who may open a shell on the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lepton_lab.config import policy_path
from lepton_lab.errors import ConfigError
from lepton_lab.security.files import write_new
from lepton_lab.security.policy_file import example_policy_text, policy_fields, read_policy_yaml
from lepton_lab.security.quota import Quota, Usage, check_quota
from lepton_lab.security.roles import ALL_TEAMS, BUILTIN_ROLES, PERMISSIONS, ROLE_RANKS, role_rank, suggest

#: How many (user, team) quotas a policy remembers before it starts over.
QUOTA_MEMO = 4096

@dataclass(frozen=True)
class Grant:
    """One role a user holds in one team, and where it comes from (``via`` a group, or '' when direct)."""

    team: str
    role: str
    via: str = ""


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build it with ``load_policy`` or ``Policy.from_dict``."""

    teams: tuple[str, ...]
    roles: Mapping[str, frozenset[str]]
    members: Mapping[str, Mapping[str, str]]
    groups: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    team_quotas: Mapping[str, Quota] = field(default_factory=lambda: MappingProxyType({}))
    user_quotas: Mapping[str, Quota] = field(default_factory=lambda: MappingProxyType({}))
    default_user_quota: Quota = Quota()
    default_team_quota: Quota = Quota()
    terminal_roles: frozenset[str] = frozenset({"admin"})
    trusted: frozenset[str] = frozenset()
    source: str = "<policy>"
    version: int = 1
    #: "team" or "team/dataset" -> (ε, δ): the differential-privacy budget of its data.
    privacy: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    #: (user, team) -> quota_for's answer: the policy never changes, and a request asks it again and again.
    _quotas: dict[tuple[str | None, str | None], Quota] = field(default_factory=dict, init=False, repr=False,
                                                                compare=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        """Validate parsed YAML/JSON and return the Policy; any problem raises a one-line ConfigError."""
        return cls(**policy_fields(data, source))

    # -- who holds what -------------------------------------------------------------

    def grants(self, user: str, groups: Iterable[str] = ()) -> list[Grant]:
        """Every (team, role) the user holds, directly or through one of ``groups``, "*" expanded."""
        if isinstance(groups, str):
            raise TypeError(f"groups is a list of group names, not the string {groups!r}")
        sources = [("", self.members.get(user, {}))]
        sources += [(group, self.groups.get(group, {})) for group in groups]
        found = []
        for via, rules in sources:
            for team_key, role in rules.items():
                for team in self.teams if team_key == ALL_TEAMS else (team_key,):
                    found.append(Grant(team, role, via))
        return found

    def roles_of(self, user: str, groups: Iterable[str] = ()) -> dict[str, str]:
        """The user's role in each of their teams ({team: role}); with several, the highest-ranked."""
        best: dict[str, str] = {}
        for grant in self.grants(user, groups):
            held = best.get(grant.team)
            if held is None or self._role_key(grant.role) > self._role_key(held):
                best[grant.team] = grant.role
        return {team: best[team] for team in self.teams if team in best}

    def teams_of(self, user: str, groups: Iterable[str] = ()) -> list[str]:
        """The teams the user belongs to, in the policy's order."""
        return list(self.roles_of(user, groups))

    def permissions(self, user: str, groups: Iterable[str] = (), team: str | None = None) -> set[str]:
        """The user's permissions in ``team``, or in any of their teams when ``team`` is None."""
        perms: set[str] = set()
        for grant in self.grants(user, groups):
            if team is None or grant.team == team:
                perms |= self.roles[grant.role]
        return perms

    def allows(
        self,
        user: str,
        groups: Iterable[str],
        permission: str,
        team: str | None = None,
        *,
        owner: str | None = None,
    ) -> bool:
        """True when the user has ``permission`` (in ``team``, or in some team when None).

        With ``owner`` (the user who owns the cluster or model acted on, in
        ``team``), a user who is not the owner also needs a lead-or-higher role
        in that team.
        """
        _check_permission(permission)
        if owner is not None and team is None:
            raise ValueError("allows(..., owner=...) needs the team that holds the resource")
        groups = tuple(groups)
        if permission not in self.permissions(user, groups, team):
            return False
        if owner is None or owner == user:
            return True
        return self._top_rank(user, groups, team) >= ROLE_RANKS["lead"]

    def explain(
        self,
        user: str,
        groups: Iterable[str],
        permission: str,
        team: str | None = None,
        *,
        owner: str | None = None,
    ) -> str:
        """One line saying why ``allows`` answers as it does, and for a denial what would change it."""
        _check_permission(permission)
        groups = tuple(groups)
        where = f"in {team}" if team else "in any team"
        if team is not None and team not in self.teams:
            return f"{team} is not a team of {self.source} (teams: {', '.join(self.teams) or 'none'})"
        grants = [g for g in self.grants(user, groups) if team is None or g.team == team]
        if not grants:
            if not self.grants(user, groups):
                return f"{user} is in no team; an admin can add them under 'members:' in {self.source}"
            return f"{user} has no role {where} (their teams: {', '.join(self.teams_of(user, groups))})"
        if permission not in self.permissions(user, groups, team):
            held = _describe_grants(grants)
            with_it = sorted(name for name, perms in self.roles.items() if permission in perms)
            return (
                f"{user} has {held}, which lack{'s' if held.startswith('role ') else ''} {permission}; "
                f"roles with it: {', '.join(with_it) or 'none'}"
            )
        if (
            owner is not None
            and owner != user
            and not self.allows(user, groups, permission, team, owner=owner)
        ):
            return (
                f"{user} has {_describe_grants(grants)}; acting on {owner}'s resources {where} "
                f"needs the lead or admin role"
            )
        granting = _describe_grants([g for g in grants if permission in self.roles[g.role]])
        return f"{user} may use {permission} {where}: {granting} grants it"

    def trusts(self, user: str) -> bool:
        """True when the policy's ``trusted:`` list names ``user``: they may run code as the server's account."""
        return user in self.trusted

    def privacy_budget(self, team: str, dataset: str | None = None) -> tuple[float, float] | None:
        """(ε, δ) that spending on ``team``'s ``dataset`` may reach: the dataset's own, else the team's."""
        return self.privacy.get(f"{team}/{dataset}") if dataset and f"{team}/{dataset}" in self.privacy \
            else self.privacy.get(team)

    # -- quotas ---------------------------------------------------------------------

    def quota_for(self, user: str | None = None, team: str | None = None) -> Quota:
        """The quota of a user, of a team, or with both the tighter of the two, field by field."""
        if user is None and team is None:
            raise TypeError("quota_for needs a user, a team or both")
        found = self._quotas.get((user, team))
        if found is not None:
            return found
        user_quota = self.user_quotas.get(user, self.default_user_quota) if user is not None else Quota()
        team_quota = self.team_quotas.get(team, self.default_team_quota) if team is not None else Quota()
        if len(self._quotas) >= QUOTA_MEMO:  # any signed-in name may ask: the memo stays bounded
            self._quotas.clear()
        found = self._quotas[(user, team)] = user_quota.tighter(team_quota)
        return found

    # -- helpers --------------------------------------------------------------------

    def _role_key(self, role: str) -> tuple[int, int, str]:
        # Ties between roles a file adds go to the one with more permissions, then by name,
        # so the displayed role never depends on dict order.
        return (role_rank(role), len(self.roles.get(role, ())), role)

    def _top_rank(self, user: str, groups: tuple[str, ...], team: str | None) -> int:
        ranks = [role_rank(g.role) for g in self.grants(user, groups) if team is None or g.team == team]
        return max(ranks, default=0)


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate the policy file (default ``config.policy_path()``)."""
    path = Path(policy_path() if path is None else path)
    # Messages name the file, not where it lives: they reach users who have no business
    # knowing the server's directories.
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path.name}: no policy file; write a commented example with "
            f"lepton_lab.security.policy.ensure_policy_file(PATH, '<your user name>') and edit it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read the policy file: {exc.strerror}") from None
    return parse_policy_text(text, source=path.name)


def parse_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; syntax errors become one-line ConfigErrors with the line number."""
    return Policy.from_dict(read_policy_yaml(text, source), source=source)


def default_policy(local_user: str) -> Policy:
    """The example policy, parsed: ``local_user`` administers every team."""
    return parse_policy_text(example_policy_text(local_user), source="<default policy>")


def ensure_policy_file(path: str | Path, local_user: str) -> Policy:
    """Load the policy at ``path``, first writing the commented example there if no file exists."""
    path = Path(path)
    if not path.exists():
        write_new(path, example_policy_text(local_user).encode(), mode=0o600)
    return load_policy(path)


def _check_permission(permission: str) -> None:
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}{suggest(permission, PERMISSIONS)}")


def _describe_grants(grants: list[Grant]) -> str:
    parts: dict[tuple[str, str], str] = {}
    for grant in grants:
        via = f" (via group {grant.via})" if grant.via else ""
        parts.setdefault((grant.role, grant.team), f"{grant.role} in {grant.team}{via}")
    return ("role " if len(parts) == 1 else "roles ") + ", ".join(parts.values())


__all__ = [
    "ALL_TEAMS",
    "BUILTIN_ROLES",
    "PERMISSIONS",
    "ROLE_RANKS",
    "Grant",
    "Policy",
    "Quota",
    "Usage",
    "check_quota",
    "default_policy",
    "ensure_policy_file",
    "example_policy_text",
    "load_policy",
    "parse_policy_text",
    "role_rank",
]
