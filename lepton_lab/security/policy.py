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

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from lepton_lab.config import policy_path
from lepton_lab.errors import ConfigError, QuotaExceeded
from lepton_lab.security.files import write_new

#: Every permission a role can carry.
PERMISSIONS: tuple[str, ...] = (
    "clusters:create",
    "clusters:use",
    "clusters:scale",
    "clusters:delete",
    "clusters:read",
    "models:read",
    "models:publish",
    "models:delete",
    "templates:read",
    "audit:read",
    "terminals:use",
    "policy:admin",
)

_ANALYST = frozenset(
    {
        "clusters:create",
        "clusters:use",
        "clusters:scale",
        "clusters:delete",
        "clusters:read",
        "models:read",
        "models:publish",
        "templates:read",
    }
)

#: Roles that exist even when the file declares none.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "admin": frozenset(PERMISSIONS),
        "lead": frozenset(PERMISSIONS) - {"audit:read", "policy:admin"},
        "analyst": _ANALYST,
        "viewer": frozenset({"clusters:read", "models:read", "templates:read"}),
    }
)

#: Display order of the built-in roles; roles a file adds rank 0.
ROLE_RANKS: Mapping[str, int] = MappingProxyType({"admin": 40, "lead": 30, "analyst": 20, "viewer": 10})

#: Team key in ``members`` / ``groups`` that stands for every team.
ALL_TEAMS = "*"

_TOP_LEVEL = ("version", "teams", "roles", "members", "groups", "quotas", "terminals", "trusted", "privacy")
_QUOTA_SECTIONS = ("teams", "users", "default_user", "default_team")
_QUOTA_FIELDS = ("max_gpus", "max_workers", "max_clusters")
#: Fields only a team's quota takes: money its clusters may cost, minutes a cluster may sit idle.
_TEAM_FIELDS = ("spend_cap", "idle_timeout")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def role_rank(role: str) -> int:
    """Rank of a role for display and ownership: admin 40 > lead 30 > analyst 20 > viewer 10, others 0."""
    return ROLE_RANKS.get(role, 0)


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

    def tighter(self, other: Quota) -> Quota:
        """The field-by-field smaller of two quotas (``None`` loses to any number)."""
        merged: dict[str, Any] = {}
        for name in _QUOTA_FIELDS + _TEAM_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            merged[name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return Quota(**merged)


@dataclass(frozen=True)
class Usage:
    """Resources held (or asked for): GPUs, workers and clusters."""

    gpus: int = 0
    workers: int = 0
    clusters: int = 0


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

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        """Validate parsed YAML/JSON and return the Policy; any problem raises a one-line ConfigError."""
        return _Parser(source).policy(data)

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
        user_quota = self.user_quotas.get(user, self.default_user_quota) if user is not None else Quota()
        team_quota = self.team_quotas.get(team, self.default_team_quota) if team is not None else Quota()
        return user_quota.tighter(team_quota)

    # -- helpers --------------------------------------------------------------------

    def _role_key(self, role: str) -> tuple[int, int, str]:
        # Ties between roles a file adds go to the one with more permissions, then by name,
        # so the displayed role never depends on dict order.
        return (role_rank(role), len(self.roles.get(role, ())), role)

    def _top_rank(self, user: str, groups: tuple[str, ...], team: str | None) -> int:
        ranks = [role_rank(g.role) for g in self.grants(user, groups) if team is None or g.team == team]
        return max(ranks, default=0)


def check_quota(
    policy: Policy,
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


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate the policy file (default ``config.policy_path()``)."""
    path = Path(policy_path() if path is None else path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no policy file; write a commented example with "
            f"lepton_lab.security.policy.ensure_policy_file('{path}', '<your user name>') and edit it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    return parse_policy_text(text, source=str(path))


def parse_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; syntax errors become one-line ConfigErrors with the line number."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}: {where}YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML syntax error: {exc}") from None
    return Policy.from_dict(data, source=source)


def example_policy_text(local_user: str) -> str:
    """A commented example policy: ``local_user`` is admin of every team, plus three sample users."""
    me = json.dumps(local_user)  # a JSON string is valid YAML and survives names like "no" or "123"
    # Sample users get a second name when the local user already has the first.
    names = (("alice", "amir"), ("bob", "bea"), ("vera", "vic"))
    analyst, finance, viewer = (second if first == local_user else first for first, second in names)
    members = [
        (me, '{"*": admin}', "the local user, who runs the server"),
        (analyst, "{medical: analyst}", "a medical analyst"),
        (finance, "{finance: analyst}", "a finance analyst"),
        (viewer, "{medical: viewer, finance: viewer}", "reads both teams, changes nothing"),
    ]
    member_lines = "".join(f"  {f'{name}: {rule}':<46}# {note}\n" for name, rule, note in members)
    return f"""\
# Lepton Lab access policy: who may do what, in which team, and how much they may hold.
# The server reads it at start; after an edit restart the server. Every error names
# the field at fault, e.g. "members.alice.medical: unknown role 'analist'".

# Format version of this file; 1 is the only one.
version: 1

# Teams own clusters, models and templates. Every team named below must be listed here.
teams: [medical, finance]

# Roles are named sets of permissions. Four are built in:
#   admin    every permission
#   lead     everything but audit:read and policy:admin; may act on any member's clusters
#   analyst  clusters:create, clusters:use, clusters:scale, clusters:delete (own clusters),
#            clusters:read, models:read, models:publish, templates:read
#   viewer   clusters:read, models:read, templates:read
# A role listed here adds a new role or replaces the built-in one of the same name.
# The permissions: clusters:create clusters:use clusters:scale clusters:delete clusters:read
#   models:read models:publish models:delete templates:read audit:read terminals:use policy:admin
# (terminals:use is given by the 'terminals' list at the end, not here.)
roles:
  auditor: [audit:read, clusters:read, models:read]

# Users and their role in each team; the team "*" means every team.
# Someone with several roles in a team (here and through groups) has all their permissions.
members:
{member_lines}
# JupyterHub groups, same shape as members: each member of the group gets the role.
groups:
  hub-medical: {{medical: analyst}}

# How much may be held at once. Fields: max_gpus, max_workers, max_clusters;
# null (or a field left out of a default) means unlimited. A team's quota also takes
# spend_cap (what its clusters may cost, worker-hours x cost per worker-hour; creating a
# cluster past it is refused) and idle_timeout (minutes with no task and no client
# activity after which a cluster is stopped).
quotas:
  # Everything a team's members hold together.
  teams:
    medical: {{max_gpus: 4, max_workers: 32, max_clusters: 8}}
    finance: {{max_gpus: 2, max_workers: 16, max_clusters: 4}}
  # Teams not listed above.
  default_team: {{max_gpus: 2, max_workers: 16, max_clusters: 4}}
  # Per user; a field left out here comes from default_user.
  users:
    {me}: {{max_gpus: null, max_workers: null, max_clusters: null}}
    {finance}: {{max_clusters: 1}}
  # Users not listed above.
  default_user: {{max_gpus: 1, max_workers: 8, max_clusters: 2}}

# Differential-privacy budgets, ε at δ, for a team's data or one dataset of it
# ("team/dataset"): federated tuning charges each trial before it runs and stops
# before a budget would be exceeded.
# privacy:
#   medical: {{epsilon: 8, delta: 1.0e-5}}

# Roles whose users may open terminals. A terminal is a shell as the server's own
# user, so only admins by default.
terminals: [admin]

# Users other than the server's owner who may start kernels and terminals and get
# cluster credentials on this shared server. Their code runs as the server's own
# account and can read every team's files; everyone else uses the team deployment
# (JupyterHub), where code runs under the user's own account.
trusted: []
"""


def default_policy(local_user: str) -> Policy:
    """The example policy, parsed: ``local_user`` administers every team."""
    return parse_policy_text(example_policy_text(local_user), source="<default policy>")


def ensure_policy_file(path: str | Path, local_user: str) -> Policy:
    """Load the policy at ``path``, first writing the commented example there if no file exists."""
    path = Path(path)
    if not path.exists():
        write_new(path, example_policy_text(local_user).encode(), mode=0o600)
    return load_policy(path)


# -- validation ---------------------------------------------------------------------


class _Parser:
    """Turns untrusted data into a Policy, failing on the first problem with its field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {reason}" if where else f"{self.source}: {reason}")

    def policy(self, data: Any) -> Policy:
        if data is None:
            raise self.fail("", "the policy is empty; start from example_policy_text()")
        data = self.mapping(data, "", "the top level")
        unknown = [key for key in data if key not in _TOP_LEVEL]
        if unknown:
            raise self.fail(
                str(unknown[0]), f"unknown section{_known(str(unknown[0]), _TOP_LEVEL, 'sections')}"
            )
        if "version" not in data:
            raise self.fail("version", "missing; add 'version: 1' at the top")
        if data["version"] != 1 or isinstance(data["version"], bool):
            raise self.fail("version", f"unsupported version {data['version']!r} (supported: 1)")

        teams = self.names(data.get("teams", []), "teams", "team")
        roles = self.roles(_section(data, "roles"))
        terminals = self.names(data.get("terminals", ["admin"]), "terminals", "role")
        for position, role in enumerate(terminals):
            if role not in roles:
                raise self.fail(f"terminals[{position}]", f"unknown role {role!r}{_known(role, roles)}")
        terminal_roles = frozenset(terminals)
        # terminals:use follows the 'terminals' list so that one line says who gets a shell.
        roles = {
            name: (perms - {"terminals:use"}) | ({"terminals:use"} if name in terminal_roles else set())
            for name, perms in roles.items()
        }
        trusted = self.names(_section(data, "trusted") or [], "trusted", "user", strict=False)
        members = self.rules(_section(data, "members"), "members", "user", teams, roles)
        groups = self.rules(_section(data, "groups"), "groups", "group", teams, roles)
        quotas = self.mapping(_section(data, "quotas"), "quotas", "quotas")
        for key in quotas:
            if key not in _QUOTA_SECTIONS:
                raise self.fail(f"quotas.{key}", f"unknown section{_known(key, _QUOTA_SECTIONS, 'sections')}")
        default_user = Quota(**self.quota(_section(quotas, "default_user"), "quotas.default_user"))
        default_team = Quota(**self.quota(_section(quotas, "default_team"), "quotas.default_team", team=True))
        team_quotas = {}
        for team, value in self.mapping(_section(quotas, "teams"), "quotas.teams", "team quotas").items():
            where = f"quotas.teams.{team}"
            if team not in teams:
                raise self.fail(where, f"unknown team {team!r}{_known(team, teams)}")
            team_quotas[team] = replace(default_team, **self.quota(value, where, team=True))
        user_quotas = {}
        for user, value in self.mapping(_section(quotas, "users"), "quotas.users", "user quotas").items():
            where = f"quotas.users.{user}"
            self.name(user, where, "user", strict=False)
            user_quotas[user] = replace(default_user, **self.quota(value, where))
        return Policy(
            teams=tuple(teams),
            roles=MappingProxyType({name: frozenset(perms) for name, perms in roles.items()}),
            members=MappingProxyType(members),
            groups=MappingProxyType(groups),
            team_quotas=MappingProxyType(team_quotas),
            user_quotas=MappingProxyType(user_quotas),
            default_user_quota=default_user,
            default_team_quota=default_team,
            terminal_roles=terminal_roles,
            trusted=frozenset(trusted),
            source=self.source,
            version=1,
            privacy=MappingProxyType(self.privacy(_section(data, "privacy"), teams)),
        )

    def privacy(self, value: Any, teams: list[str]) -> dict[str, tuple[float, float]]:
        """``privacy: {team: {epsilon: 8, delta: 1e-5}, team/dataset: {...}}``."""
        out = {}
        for key, budget in self.mapping(value, "privacy", "privacy budgets").items():
            where = f"privacy.{key}"
            team = str(key).split("/")[0]
            if team not in teams:
                raise self.fail(where, f"unknown team {team!r}{_known(team, teams)}")
            budget = self.mapping(budget, where, "a budget")
            if set(budget) != {"epsilon", "delta"}:
                raise self.fail(where, "give epsilon and delta, e.g. {epsilon: 8, delta: 1e-5}")
            eps, delta = budget["epsilon"], budget["delta"]
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
                raise self.fail(f"{where}.epsilon", f"must be a positive number, got {eps!r}")
            if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
                raise self.fail(f"{where}.delta", f"must be between 0 and 1, got {delta!r}")
            out[str(key)] = (float(eps), float(delta))
        return out

    def roles(self, value: Any) -> dict[str, frozenset[str]]:
        roles = dict(BUILTIN_ROLES)
        for name, perms in self.mapping(value, "roles", "roles").items():
            where = f"roles.{name}"
            self.name(name, where, "role")
            if not isinstance(perms, list):
                raise self.fail(where, f"must be a list of permissions, got {_kind(perms)}")
            for position, perm in enumerate(perms):
                if not isinstance(perm, str):
                    raise self.fail(f"{where}[{position}]", f"a permission is a string, got {_kind(perm)}")
                if perm not in PERMISSIONS:
                    raise self.fail(
                        f"{where}[{position}]", f"unknown permission {perm!r}{_known(perm, PERMISSIONS)}"
                    )
                if perm == "terminals:use":
                    raise self.fail(
                        f"{where}[{position}]",
                        f"terminals:use is given by the top-level 'terminals' list; add {name} there instead",
                    )
            roles[name] = frozenset(perms)
        return roles

    def rules(self, value: Any, section: str, noun: str, teams: list[str], roles: Mapping[str, Any]) -> dict:
        rules = {}
        for who, per_team in self.mapping(value, section, section).items():
            where = f"{section}.{who}"
            self.name(who, where, noun, strict=False)
            per_team = self.mapping(per_team, where, f"a {noun}'s teams ({{team: role}})")
            for team, role in per_team.items():
                if not isinstance(team, str):
                    raise self.fail(where, f"team names are strings, got {_kind(team)} {team!r}")
                if team != ALL_TEAMS and team not in teams:
                    raise self.fail(
                        f"{where}.{team}", f"unknown team {team!r}{_known(team, teams + [ALL_TEAMS])}"
                    )
                if not isinstance(role, str):
                    raise self.fail(f"{where}.{team}", f"a role is a string, got {_kind(role)}")
                if role not in roles:
                    raise self.fail(f"{where}.{team}", f"unknown role {role!r}{_known(role, roles)}")
            rules[who] = MappingProxyType(dict(per_team))
        return rules

    def quota(self, value: Any, where: str, *, team: bool = False) -> dict[str, Any]:
        value = self.mapping(value, where, "a quota")
        for key, limit in value.items():
            if key in _TEAM_FIELDS:
                if not team:
                    raise self.fail(f"{where}.{key}", "a team's limit; set it under quotas.teams or default_team")
                if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                          or not 0 <= limit < float("inf") or (key == "idle_timeout" and not limit)):
                    low = "> 0 (minutes)" if key == "idle_timeout" else ">= 0"
                    raise self.fail(f"{where}.{key}", f"must be a number {low}, or null for none; got {limit!r}")
                continue
            if key not in _QUOTA_FIELDS:
                raise self.fail(
                    f"{where}.{key}", f"unknown quota field{_known(key, _QUOTA_FIELDS + _TEAM_FIELDS, 'fields')}"
                )
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
                raise self.fail(
                    f"{where}.{key}", f"must be a whole number >= 0, or null for unlimited; got {limit!r}"
                )
        return dict(value)

    def names(self, value: Any, where: str, noun: str, *, strict: bool = True) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list of {noun} names, got {_kind(value)}")
        seen: list[str] = []
        for position, name in enumerate(value):
            self.name(name, f"{where}[{position}]", noun, strict=strict)
            if name in seen:
                raise self.fail(f"{where}[{position}]", f"{noun} {name!r} is listed twice")
            seen.append(name)
        return seen

    def name(self, name: Any, where: str, noun: str, *, strict: bool = True) -> None:
        if not isinstance(name, str) or not name.strip():
            raise self.fail(where, f"a {noun} name must be a non-empty string, got {name!r} (quote it)")
        if strict and not _NAME.match(name):
            raise self.fail(where, f"{noun} name {name!r} may hold only letters, digits, '.', '_' and '-'")

    def mapping(self, value: Any, where: str, what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"{what} must be a mapping (key: value), got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(where, f"keys must be strings, got {_kind(key)} {key!r} (quote it)")
        return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML silently resolves to the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _section(data: dict, key: str) -> Any:
    """A section's value; an empty one (``members:`` with nothing after it) reads as ``{}``."""
    value = data.get(key)
    return {} if value is None else value


def _check_permission(permission: str) -> None:
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}{_known(permission, PERMISSIONS)}")


def _describe_grants(grants: list[Grant]) -> str:
    parts: dict[tuple[str, str], str] = {}
    for grant in grants:
        via = f" (via group {grant.via})" if grant.via else ""
        parts.setdefault((grant.role, grant.team), f"{grant.role} in {grant.team}{via}")
    return ("role " if len(parts) == 1 else "roles ") + ", ".join(parts.values())


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _kind(value: Any) -> str:
    kinds = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return kinds.get(type(value), "nothing" if value is None else f"a {type(value).__name__}")


def _known(name: str, known: Iterable[str], label: str = "known") -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    return (f"; did you mean {close[0]!r}?" if close else "") + f" ({label}: {', '.join(known) or 'none'})"


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
