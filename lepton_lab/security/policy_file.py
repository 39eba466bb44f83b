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
from lepton_lab.schemas import suggest, validate
from lepton_lab.security.quota import QUOTA_FIELDS, TEAM_FIELDS, Quota
from lepton_lab.security.roles import ALL_TEAMS, BUILTIN_ROLES, PERMISSIONS

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
# cluster past it is refused), spend_period (what the cap counts: month, the calendar
# month in UTC, the default; or total) and idle_timeout (minutes with no task and no
# client activity after which a cluster is stopped).
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




_KEYS = {"type": "string", "x-reason": "keys must be strings, got {kind} {value!r} (quote it)"}


def _names(noun: str, *, strict: bool = True) -> dict[str, Any]:
    """A list of distinct names; ``strict`` names hold only letters, digits, '.', '_' and '-'."""
    name: dict[str, Any] = {
        "type": "string",
        "pattern": r"\S",
        "x-reason": f"a {noun} name must be a non-empty string, got {{value!r}} (quote it)",
    }
    if strict:
        name["allOf"] = [{"pattern": _NAME.pattern,
                          "x-reason": f"{noun} name {{value!r}} may hold only letters, digits, '.', '_' and '-'"}]
    return {"type": "array", "uniqueItems": True, "items": name,
            "x-reason": {"type": f"must be a list of {noun} names, got {{kind}}",
                         "uniqueItems": f"{noun} {{value!r}} is listed twice"}}


def _mapping(what: str, values: dict[str, Any], *, keys: dict[str, Any] | None = None,
             empty: bool = True) -> dict[str, Any]:
    """A mapping of names to ``values``; ``keys`` checks each name (the path names the key at fault)."""
    names: dict[str, Any] = dict(_KEYS)
    if keys:
        names["allOf"] = [{**keys, "x-at-key": True}]
    return {"type": ["object", "null"] if empty else "object", "propertyNames": names,
            "additionalProperties": values,
            "x-reason": {"type": f"{what} must be a mapping (key: value), got {{kind}}"}}


def _user_names(noun: str) -> dict[str, Any]:
    return {"pattern": r"\S", "x-reason": f"a {noun} name must be a non-empty string, got {{value!r}} (quote it)"}


_WHOLE_LIMIT: dict[str, Any] = {"type": ["integer", "null"], "minimum": 0,
                "x-reason": "must be a whole number >= 0, or null for unlimited; got {value!r}"}
_TEAM_ONLY: dict[str, Any] = {"not": {}, "x-reason": "a team's limit; set it under quotas.teams or default_team"}
_TEAM_LIMITS: dict[str, dict[str, Any]] = {
    "spend_cap": {"type": ["number", "null"], "minimum": 0,
                  "x-reason": "must be a number >= 0, or null for none; got {value!r}"},
    "idle_timeout": {"type": ["number", "null"], "exclusiveMinimum": 0,
                     "x-reason": "must be a number > 0 (minutes), or null for none; got {value!r}"},
    "spend_period": {"enum": ["month", "total", None], "x-reason": "must be month or total; got {value!r}"},
}


def _quota(*, team: bool, default: bool = False) -> dict[str, Any]:
    """A quota; a default one may be left empty (``default_user:`` with nothing after it)."""
    limits: dict[str, dict[str, Any]] = {name: _WHOLE_LIMIT for name in QUOTA_FIELDS}
    limits.update(_TEAM_LIMITS if team else {name: _TEAM_ONLY for name in TEAM_FIELDS})
    return {"type": ["object", "null"] if default else "object", "propertyNames": _KEYS,
            "additionalProperties": False, "properties": limits,
            "x-unknown": "unknown quota field{close} (fields: {known})",
            "x-reason": {"type": "a quota must be a mapping (key: value), got {kind}"}}


_ROLE = {"type": "string", "x-reason": "a role is a string, got {kind}"}
_RULES = {"type": "object",
          "propertyNames": {"type": "string", "x-reason": "team names are strings, got {kind} {value!r}"},
          "additionalProperties": _ROLE}
_BUDGET = {
    "type": "object", "required": ["epsilon", "delta"], "additionalProperties": False,
    "properties": {
        "epsilon": {"type": "number", "exclusiveMinimum": 0, "x-reason": "must be a positive number, got {value!r}"},
        "delta": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                  "x-reason": "must be between 0 and 1, got {value!r}"},
    },
    "x-reason": {"type": "a budget must be a mapping (key: value), got {kind}"},
    "x-missing": "give epsilon and delta, e.g. {{epsilon: 8, delta: 1e-5}}",
    "x-unknown": "give epsilon and delta only, e.g. {{epsilon: 8, delta: 1e-5}}",
}

#: The policy file's shape. Names it refers to (teams, roles) are checked after it, in code.
POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Lepton Lab policy file",
    "type": "object",
    "propertyNames": _KEYS,
    "additionalProperties": False,
    "required": ["version"],
    "properties": {
        "version": {"type": "integer", "const": 1, "x-reason": "unsupported version {value!r} (supported: 1)"},
        "teams": _names("team"),
        "roles": _mapping("roles", {
            "type": "array",
            "items": {"type": "string", "enum": list(PERMISSIONS),
                      "x-reason": {"type": "a permission is a string, got {kind}",
                                   "enum": "unknown permission {value!r}{close} (known: {choices})"}},
            "x-reason": "must be a list of permissions, got {kind}",
        }, keys={"pattern": _NAME.pattern, "x-reason": "role name {value!r} may hold only letters, digits, "
                                                        "'.', '_' and '-'"}),
        "members": _mapping("members", {**_RULES, "x-reason": {
            "type": "a user's teams ({{team: role}}) must be a mapping (key: value), got {kind}"}},
            keys=_user_names("user")),
        "groups": _mapping("groups", {**_RULES, "x-reason": {
            "type": "a group's teams ({{team: role}}) must be a mapping (key: value), got {kind}"}},
            keys=_user_names("group")),
        "quotas": {
            "type": ["object", "null"], "additionalProperties": False,
            "propertyNames": _KEYS,
            "properties": {
                "teams": _mapping("team quotas", _quota(team=True)),
                "users": _mapping("user quotas", _quota(team=False), keys=_user_names("user")),
                "default_user": _quota(team=False, default=True),
                "default_team": _quota(team=True, default=True),
            },
            "x-unknown": "unknown section{close} (sections: {known})",
            "x-reason": {"type": "quotas must be a mapping (key: value), got {kind}"},
        },
        "terminals": _names("role"),
        "trusted": {**_names("user", strict=False), "type": ["array", "null"]},
        "privacy": _mapping("privacy budgets", _BUDGET),
    },
    "x-unknown": "unknown section{close} (sections: {known})",
    "x-missing": {"version": "missing; add 'version: 1' at the top"},
    "x-reason": {"type": "the top level must be a mapping (key: value), got {kind}"},
}


def policy_fields(data: Any, source: str = "<policy>") -> dict[str, Any]:
    """Validate parsed YAML/JSON into the fields of a Policy; any problem raises a one-line ConfigError."""
    if data is None:
        raise ConfigError(f"{source}: the policy is empty; start from example_policy_text()")
    validate(data, POLICY_SCHEMA, source)
    return _Parser(source).policy(data)


class _Parser:
    """The checks a schema cannot make: names used where they must be defined, and the Policy's fields."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {reason}")

    def policy(self, data: dict[str, Any]) -> dict[str, Any]:
        teams = list(data.get("teams", []))
        roles = self.roles(_section(data, "roles"))
        terminals = list(data.get("terminals", ["admin"]))
        for position, role in enumerate(terminals):
            if role not in roles:
                raise self.fail(f"terminals[{position}]", f"unknown role {role!r}{suggest(role, roles)}")
        terminal_roles = frozenset(terminals)
        # terminals:use follows the 'terminals' list so that one line says who gets a shell.
        roles = {
            name: (perms - {"terminals:use"}) | ({"terminals:use"} if name in terminal_roles else set())
            for name, perms in roles.items()
        }
        members = self.rules(_section(data, "members"), "members", teams, roles)
        groups = self.rules(_section(data, "groups"), "groups", teams, roles)
        quotas = _section(data, "quotas")
        default_user = Quota(**_section(quotas, "default_user"))
        default_team = Quota(**_section(quotas, "default_team"))
        team_quotas = {}
        for team, value in _section(quotas, "teams").items():
            if team not in teams:
                raise self.fail(f"quotas.teams.{team}", f"unknown team {team!r}{suggest(team, teams)}")
            team_quotas[team] = replace(default_team, **value)
        user_quotas = {user: replace(default_user, **value)
                       for user, value in _section(quotas, "users").items()}
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
            trusted=frozenset(_section(data, "trusted") or ()),
            source=self.source,
            version=1,
            privacy=MappingProxyType(self.privacy(_section(data, "privacy"), teams)),
        )

    def privacy(self, budgets: dict[str, Any], teams: list[str]) -> dict[str, tuple[float, float]]:
        """``privacy: {team: {epsilon: 8, delta: 1e-5}, team/dataset: {...}}``."""
        out = {}
        for key, budget in budgets.items():
            team = key.split("/")[0]
            if team not in teams:
                raise self.fail(f"privacy.{key}", f"unknown team {team!r}{suggest(team, teams)}")
            out[key] = (float(budget["epsilon"]), float(budget["delta"]))
        return out

    def roles(self, declared: dict[str, list[str]]) -> dict[str, frozenset[str]]:
        roles = dict(BUILTIN_ROLES)
        for name, perms in declared.items():
            if "terminals:use" in perms:
                raise self.fail(
                    f"roles.{name}[{perms.index('terminals:use')}]",
                    f"terminals:use is given by the top-level 'terminals' list; add {name} there instead",
                )
            roles[name] = frozenset(perms)
        return roles

    def rules(self, value: dict[str, dict[str, str]], section: str, teams: list[str],
              roles: Mapping[str, Any]) -> dict:
        rules = {}
        for who, per_team in value.items():
            for team, role in per_team.items():
                where = f"{section}.{who}.{team}"
                if team != ALL_TEAMS and team not in teams:
                    raise self.fail(where, f"unknown team {team!r}{suggest(team, teams + [ALL_TEAMS])}")
                if role not in roles:
                    raise self.fail(where, f"unknown role {role!r}{suggest(role, roles)}")
            rules[who] = MappingProxyType(dict(per_team))
        return rules


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


__all__ = ["POLICY_SCHEMA", "example_policy_text", "policy_fields", "read_policy_yaml"]
