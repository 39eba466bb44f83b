"""The policy file: its YAML, read strictly, a commented example, and the checks that turn it into a policy.

Every problem is one line naming the file and the field (``policy.yaml: members.alice.medical:
unknown role 'analist'; did you mean 'analyst'? (known: ...)``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import yaml

from lepton_lab.errors import ConfigError
from lepton_lab.security.quota import QUOTA_FIELDS, TEAM_FIELDS, Quota
from lepton_lab.security.roles import ALL_TEAMS, BUILTIN_ROLES, PERMISSIONS, suggest

_TOP_LEVEL = ("version", "teams", "roles", "members", "groups", "quotas", "terminals", "trusted", "privacy")
_QUOTA_SECTIONS = ("teams", "users", "default_user", "default_team")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_policy_yaml(text: str, source: str = "<policy>") -> Any:
    """The YAML of a policy file, read; syntax errors become one-line ConfigErrors with the line number."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}: {where}YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML syntax error: {exc}") from None


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




def policy_fields(data: Any, source: str = "<policy>") -> dict[str, Any]:
    """Validate parsed YAML/JSON into the fields of a Policy; any problem raises a one-line ConfigError."""
    return _Parser(source).policy(data)


class _Parser:
    """Turns untrusted data into the fields of a Policy, failing on the first problem with its field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {reason}" if where else f"{self.source}: {reason}")

    def policy(self, data: Any) -> dict[str, Any]:
        if data is None:
            raise self.fail("", "the policy is empty; start from example_policy_text()")
        data = self.mapping(data, "", "the top level")
        unknown = [key for key in data if key not in _TOP_LEVEL]
        if unknown:
            raise self.fail(
                str(unknown[0]), f"unknown section{suggest(str(unknown[0]), _TOP_LEVEL, 'sections')}"
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
                raise self.fail(f"terminals[{position}]", f"unknown role {role!r}{suggest(role, roles)}")
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
                raise self.fail(f"quotas.{key}", f"unknown section{suggest(key, _QUOTA_SECTIONS, 'sections')}")
        default_user = Quota(**self.quota(_section(quotas, "default_user"), "quotas.default_user"))
        default_team = Quota(**self.quota(_section(quotas, "default_team"), "quotas.default_team", team=True))
        team_quotas = {}
        for team, value in self.mapping(_section(quotas, "teams"), "quotas.teams", "team quotas").items():
            where = f"quotas.teams.{team}"
            if team not in teams:
                raise self.fail(where, f"unknown team {team!r}{suggest(team, teams)}")
            team_quotas[team] = replace(default_team, **self.quota(value, where, team=True))
        user_quotas = {}
        for user, value in self.mapping(_section(quotas, "users"), "quotas.users", "user quotas").items():
            where = f"quotas.users.{user}"
            self.name(user, where, "user", strict=False)
            user_quotas[user] = replace(default_user, **self.quota(value, where))
        return dict(
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
                raise self.fail(where, f"unknown team {team!r}{suggest(team, teams)}")
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
                        f"{where}[{position}]", f"unknown permission {perm!r}{suggest(perm, PERMISSIONS)}"
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
                        f"{where}.{team}", f"unknown team {team!r}{suggest(team, teams + [ALL_TEAMS])}"
                    )
                if not isinstance(role, str):
                    raise self.fail(f"{where}.{team}", f"a role is a string, got {_kind(role)}")
                if role not in roles:
                    raise self.fail(f"{where}.{team}", f"unknown role {role!r}{suggest(role, roles)}")
            rules[who] = MappingProxyType(dict(per_team))
        return rules

    def quota(self, value: Any, where: str, *, team: bool = False) -> dict[str, Any]:
        value = self.mapping(value, where, "a quota")
        for key, limit in value.items():
            if key in TEAM_FIELDS:
                if not team:
                    raise self.fail(f"{where}.{key}", "a team's limit; set it under quotas.teams or default_team")
                if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                          or not 0 <= limit < float("inf") or (key == "idle_timeout" and not limit)):
                    low = "> 0 (minutes)" if key == "idle_timeout" else ">= 0"
                    raise self.fail(f"{where}.{key}", f"must be a number {low}, or null for none; got {limit!r}")
                continue
            if key not in QUOTA_FIELDS:
                raise self.fail(
                    f"{where}.{key}", f"unknown quota field{suggest(key, QUOTA_FIELDS + TEAM_FIELDS, 'fields')}"
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


__all__ = ["example_policy_text", "policy_fields", "read_policy_yaml"]
