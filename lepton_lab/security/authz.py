"""A jupyter_server ``Authorizer`` over the policy, for Lepton's resources and Jupyter's own.

The decision is :func:`decide`, a pure function of the policy, the user, the
action and what the request touches; the Authorizer adds the audit line. Rules:

* ``lepton:<resource>`` — the permission the verb needs in *some* team; the
  handler then checks the exact team or owner through the same policy.
* ``contents``/``files`` under ``templates/<team>/`` — read needs
  ``templates:read`` in that team, writing needs ``policy:admin``; under
  ``teams/<team>/`` (team workspaces) members read and analysts and up write.
* ``terminals`` — ``terminals:use`` (admins unless the policy's ``terminals:`` says more).
* everything else (kernels, sessions, settings, the lab page) — any authenticated user.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.utils import url_path_join
from tornado import web

from .policy import ROLE_RANKS, Policy, role_rank

# Request ids of this server process: a random prefix and a counter, unique without a
# system call per request.
_REQUEST_PREFIX = secrets.token_hex(4)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """A request id for the audit log when the client sent no ``X-Request-Id``."""
    return f"{_REQUEST_PREFIX}-{next(_request_numbers):x}"

#: (lepton resource, action) -> permission needed in at least one team; None = any authenticated user.
LEPTON_RULES: dict[tuple[str, str], str | None] = {
    ("lepton:whoami", "read"): None,
    ("lepton:clusters", "read"): "clusters:read",
    ("lepton:clusters", "write"): "clusters:create|clusters:scale|clusters:delete|clusters:use",
    ("lepton:clusters", "execute"): "clusters:read",
    ("lepton:templates", "read"): "templates:read",
    ("lepton:templates", "write"): "templates:read",
    ("lepton:models", "read"): "models:read",
    ("lepton:models", "write"): "models:read|models:publish|models:delete",
    ("lepton:audit", "read"): "audit:read",
}

#: Folders of the server's root whose first component is a team.
TEAM_FOLDERS = ("templates", "teams")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    audit: bool = True


def _any_team(policy: Policy, user: str, groups: tuple[str, ...], permissions: str) -> bool:
    return any(p in policy.permissions(user, groups) for p in permissions.split("|"))


def contents_path(handler: Any) -> str | None:
    """The contents path a request touches, or None if it is not a contents/files request."""
    base = handler.settings.get("base_url", "/")
    path = handler.request.path
    for prefix in ("api/contents", "files", "api/nbconvert"):
        root = url_path_join(base, prefix)
        if path == root or path.startswith(root + "/"):
            return path[len(root):].strip("/")
    return None


def decide(policy: Policy, user: str, groups: tuple[str, ...], action: str, resource: str,
           path: str | None = None) -> Decision:
    """May ``user`` do ``action`` (read/write/execute) on ``resource``? With a one-line reason."""
    if resource.startswith("lepton:"):
        rule = LEPTON_RULES.get((resource, action), "policy:admin")
        if rule is None:
            return Decision(True, "any signed-in user", audit=False)
        if _any_team(policy, user, groups, rule):
            return Decision(True, f"{user} holds {rule.replace('|', ' or ')}")
        first = rule.split("|")[0]
        return Decision(False, policy.explain(user, groups, first))
    if resource == "terminals":
        ok = policy.allows(user, groups, "terminals:use")
        return Decision(ok, policy.explain(user, groups, "terminals:use"))
    if resource in ("contents", "files") and path is not None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] in TEAM_FOLDERS:
            team = parts[1]
            if team not in policy.teams:
                return Decision(False, f"{parts[0]}/{team} belongs to no team of the policy")
            roles = policy.roles_of(user, groups)
            if parts[0] == "templates":
                perm = "templates:read" if action == "read" else "policy:admin"
                return Decision(policy.allows(user, groups, perm, team), policy.explain(user, groups, perm, team))
            if team not in roles:
                return Decision(False, f"{user} is not a member of team {team}")
            if action != "read" and role_rank(roles[team]) < ROLE_RANKS["analyst"]:
                return Decision(False, f"{user} has role {roles[team]} in {team}, which may only read")
            return Decision(True, f"{user} is {roles[team]} in {team}")
        return Decision(True, "outside team folders", audit=False)
    return Decision(True, "any signed-in user", audit=False)


class LeptonAuthorizer(Authorizer):
    """Deny by default, explain every denial, audit every decision on Lepton's resources."""

    async def is_authorized(self, handler, user, action, resource) -> bool:  # type: ignore[override]
        services = handler.settings.get("lepton")
        if services is None:
            # The extension did not load: nothing Lepton-specific may pass.
            return not resource.startswith("lepton:")
        groups = tuple(getattr(user, "groups", ()) or ())
        path = contents_path(handler) if resource in ("contents", "files") else None
        decision = decide(services.policy, user.username, groups, action, resource, path)
        if decision.audit or not decision.allowed:
            request_id = handler.request.headers.get("X-Request-Id") or new_request_id()
            target = f"{resource}:{path}" if path else resource
            await services.record_async(user.username, action, target,
                                        "allow" if decision.allowed else "deny",
                                        reason=decision.reason, request_id=request_id,
                                        method=handler.request.method, url=handler.request.path)
        if not decision.allowed:
            handler.lepton_denial = decision.reason
            if getattr(handler, "auth_resource", None) == resource:
                # The request's own check: answer 403 with the reason, not Jupyter's generic line.
                # (Other callers, such as /api/me asking about many resources, get a plain bool.)
                raise web.HTTPError(403, decision.reason.replace("%", "%%"))
        return decision.allowed
