"""A jupyter_server ``Authorizer`` over the policy, for Lepton's resources and Jupyter's own.

The decision is :func:`decide`, a pure function of the policy, the user, the
action and what the request touches; the Authorizer adds the audit line. Rules:

* ``lepton:<resource>`` — the permission the verb needs in *some* team; the
  handler then checks the exact team or owner through the same policy.
* ``contents``, ``/files``, ``/view``, ``/nbconvert`` — decided (:mod:`.path_rules`) on the
  path the contents manager will act on (decoded once, ``.``, ``..`` and empty segments
  resolved, NFC): under ``templates/<team>/`` read needs ``templates:read`` in that
  team and writing ``policy:admin``; under ``teams/<team>/`` members read and
  analysts and up write; ``work/<user>/`` is that user's alone. A copy or a rename
  checks both ends, and a team's file leaves its team only into the user's own
  ``work/<user>/`` (or by an admin of that team).
* ``kernels``, ``sessions``, ``terminals``, ``events``, ``lsp``, ``server`` and writing
  ``config`` run or steer code as the server's account: only the server's owner and
  the users the policy's ``trusted:`` list names. A kernel and its sessions belong to
  whoever started them; anyone else gets 404 (an admin of every team the owner is in
  excepted, audited).
* ``api``, ``csp``, ``kernelspecs``, reading ``config`` — any signed-in user.
* ``lab:<resource>`` — JupyterLab's own routes (:mod:`.lab_rules`).
* any other resource — refused.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from tornado import web, websocket
from traitlets import Any as TraitAny
from traitlets import Bool

from .lab_rules import decide_lab
from .path_rules import TEAM_FOLDERS as TEAM_FOLDERS
from .path_rules import ZONE_FOLDERS as ZONE_FOLDERS
from .path_rules import Decision, decide_path, decide_request, json_body, request_paths
from .path_rules import Zone as Zone
from .path_rules import contents_path as contents_path
from .path_rules import decide_transfer as decide_transfer
from .path_rules import normalise_path as normalise_path
from .path_rules import zone_of as zone_of
from .policy import Policy

# Request ids of this server process: a random prefix and a counter, unique without a
# system call per request.
_REQUEST_PREFIX = secrets.token_hex(4)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """A request id for the audit log when the client sent no ``X-Request-Id``."""
    return f"{_REQUEST_PREFIX}-{next(_request_numbers):x}"


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class RequestTrace:
    """One request's id in the audit log, and whether a denial of it is already recorded."""

    id: str
    denied: bool = False

    @classmethod
    def of(cls, handler: Any) -> RequestTrace:
        """The trace of the request ``handler`` serves, started on first use."""
        trace = REQUEST_TRACE.get()
        if trace is None:
            sent = handler.request.headers.get("X-Request-Id") or ""
            trace = cls(sent if _REQUEST_ID.match(sent) else new_request_id())
            REQUEST_TRACE.set(trace)
        return trace


#: The request being served, for audit lines written by any layer while serving it.
REQUEST_TRACE: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "lepton_request_trace", default=None)

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
    ("lepton:studies", "read"): "clusters:use",
    ("lepton:studies", "write"): "clusters:use",
    ("lepton:privacy", "read"): "clusters:read",
    ("lepton:privacy", "write"): "clusters:use",
}

#: Jupyter resources any signed-in user may use (reading config too).
OPEN_RESOURCES = ("api", "csp", "kernelspecs")
#: Jupyter resources that run or steer code as the server's account.
CODE_RESOURCES = ("kernels", "sessions", "terminals", "events", "lsp", "server")

#: Within one request: which kernel owners the caller may see (set by the authorizer, read
#: where the kernel and session managers list what they hold).
KERNEL_VIEWER: contextvars.ContextVar[Callable[[str], bool] | None] = contextvars.ContextVar(
    "lepton_kernel_viewer", default=None)
#: Within one request: who would own a kernel started now.
KERNEL_STARTER: contextvars.ContextVar[str | None] = contextvars.ContextVar("lepton_kernel_starter", default=None)


class KernelOwners:
    """Who started each kernel; a kernel nobody recorded belongs to the server's owner."""

    def __init__(self, default: str):
        self.default = default
        self._owners: dict[str, str] = {}

    def record(self, kernel_id: str, user: str) -> None:
        self._owners.setdefault(kernel_id, user)

    def owner(self, kernel_id: str) -> str:
        return self._owners.get(kernel_id, self.default)

    def forget(self, kernel_id: str) -> None:
        self._owners.pop(kernel_id, None)


def _any_team(policy: Policy, user: str, groups: tuple[str, ...], permissions: str) -> bool:
    return any(p in policy.permissions(user, groups) for p in permissions.split("|"))


def runs_code_here(policy: Policy, user: str, server_owner: str | None) -> bool:
    """May ``user`` run code as the server's account: its owner, or named under ``trusted:``."""
    return user == server_owner or policy.trusts(user)


def untrusted_reason(policy: Policy, user: str, what: str) -> str:
    """One line: why ``user`` may not ``what`` on this shared server, and where they can."""
    return (f"{user} may not {what} on this shared server: code here runs as the server's own account "
            f"and can read every team's files; use the team deployment (JupyterHub), where it runs under "
            f"your own account, or ask an admin to add {user} under 'trusted:' in {policy.source}")


def may_see_kernel(policy: Policy, user: str, groups: tuple[str, ...], owner: str,
                   server_owner: str | None) -> bool:
    """A kernel is its owner's; the server's owner and admins of every team the owner is in see it too."""
    if owner == user or user == server_owner:
        return True
    owner_teams = policy.teams_of(owner)
    return bool(owner_teams) and all(policy.allows(user, groups, "policy:admin", t) for t in owner_teams)


def decide(policy: Policy, user: str, groups: tuple[str, ...], action: str, resource: str,
           path: str | None = None, *, server_owner: str | None = None) -> Decision:
    """May ``user`` do ``action`` (read/write/execute) on ``resource``? With a one-line reason.

    ``path`` is the normalised contents path of a contents, files or nbconvert request;
    for kernels and sessions it is the id of the one the request names, if any.
    """
    if resource.startswith("lab:"):
        return decide_lab(policy, user, action, resource, server_owner)
    if resource.startswith("lepton:"):
        rule = LEPTON_RULES.get((resource, action), "policy:admin")
        if rule is None:
            return Decision(True, "any signed-in user", audit=False)
        if _any_team(policy, user, groups, rule):
            return Decision(True, f"{user} holds {rule.replace('|', ' or ')}")
        first = rule.split("|")[0]
        return Decision(False, policy.explain(user, groups, first))
    if resource in ("contents", "files", "nbconvert"):
        if path is None:
            # A question about the resource as a whole (``/api/me``) or a conversion of a posted
            # notebook: every request that names a file is decided on that file.
            return Decision(True, "decided per file", audit=False)
        return decide_path(policy, user, groups, action, path, server_owner)
    if resource in OPEN_RESOURCES or (resource == "config" and action == "read"):
        return Decision(True, "any signed-in user", audit=False)
    if resource in ("kernels", "sessions") and (action == "read" or (action == "write" and path)):
        # Acting on one's own kernel (interrupt, restart, shut down); the owner is checked apart.
        return Decision(True, "any signed-in user, on their own kernels", audit=False)
    if resource in CODE_RESOURCES or resource == "config":
        what = {"kernels": "start or use kernels", "sessions": "start kernels",
                "terminals": "open terminals"}.get(resource, f"use {resource}")
        if not runs_code_here(policy, user, server_owner):
            return Decision(False, untrusted_reason(policy, user, what))
        if resource == "terminals":
            ok = policy.allows(user, groups, "terminals:use")
            return Decision(ok, policy.explain(user, groups, "terminals:use"))
        return Decision(True, f"{user} runs code as the server ({'owner' if user == server_owner else 'trusted'})")
    return Decision(False, f"{resource!r} is no resource this server's policy knows; refused")


class LeptonAuthorizer(Authorizer):
    """Deny by default, explain every denial, audit every decision on Lepton's resources."""

    services = TraitAny(None, allow_none=True,
                        help="The services whose policy decides and whose audit log records; set by the "
                             "server extension when it loads (None: it did not, and only Jupyter's own "
                             "resources pass)")
    control_plane = Bool(False, help="Serve the Lepton API only: the team deployment's control plane")

    async def is_authorized(self, handler, user, action, resource) -> bool:  # type: ignore[override]
        services = self.services
        if services is None:
            # The extension did not load: nothing Lepton-specific may pass.
            return not resource.startswith("lepton:")
        from .identity import server_owner

        policy = services.policy
        owner = server_owner()
        groups = tuple(getattr(user, "groups", ()) or ())
        name = user.username
        target = resource
        status = 403
        if self.control_plane and not resource.startswith("lepton:"):
            decision = Decision(False, "the Lepton control plane serves the Lepton API only")
        elif resource in ("contents", "files", "nbconvert") or _is_resolve_path(handler, resource):
            checks, transfers = request_paths(handler, resource, action)
            if _is_resolve_path(handler, resource):
                checks = [("read", handler.get_query_argument("path", ""))]
            if not checks and resource != "nbconvert" and getattr(handler, "auth_resource", None) == resource:
                decision = Decision(False, "this request names no file the policy can decide on")
            elif not checks:
                decision = decide(policy, name, groups, action, resource, None, server_owner=owner)
            else:
                decision, where = decide_request(policy, name, groups, checks, transfers, owner)
                target = f"{resource}:{where}" if where else resource
        else:
            kernel_id = await _named_kernel(handler, resource)
            decision = decide(policy, name, groups, action, resource, kernel_id, server_owner=owner)
            if resource in ("kernels", "sessions"):
                KERNEL_STARTER.set(name)
                KERNEL_VIEWER.set(lambda who: may_see_kernel(policy, name, groups, who, owner))
                if decision.allowed and kernel_id:
                    decision, target, status = _kernel_decision(handler, policy, name, groups, kernel_id, owner,
                                                                resource)
                if decision.allowed:
                    foreign = await _foreign_kernel_in_body(handler, policy, name, groups, owner)
                    if foreign is not None:
                        decision, target, status = foreign
        asked = getattr(handler, "auth_resource", resource) == resource
        if asked and (decision.audit or not decision.allowed):
            # (A handler asking about other resources, as /api/me does, is not refused anything.)
            trace = RequestTrace.of(handler)
            trace.denied = trace.denied or not decision.allowed
            await services.record_before_answer(handler, name, action, target,
                                                "allow" if decision.allowed else "deny",
                                                reason=decision.reason, request_id=trace.id,
                                                method=handler.request.method, url=handler.request.path)
        if not decision.allowed:
            handler.lepton_denial = decision.reason
            if isinstance(handler, websocket.WebSocketHandler):
                # A refused handshake answers one line of JSON, not an HTML page.
                handler.write_error = functools.partial(_json_refusal, handler, decision.reason)  # type: ignore[method-assign]
            if status == 404:
                raise web.HTTPError(404, decision.reason.replace("%", "%%"))
            if getattr(handler, "auth_resource", None) == resource:
                # The request's own check: answer 403 with the reason, not Jupyter's generic line.
                # (Other callers, such as /api/me asking about many resources, get a plain bool.)
                raise web.HTTPError(403, decision.reason.replace("%", "%%"))
        return decision.allowed


def _json_refusal(handler: Any, reason: str, status_code: int, **kwargs: Any) -> None:
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"message": " ".join(reason.split()), "reason": handler._reason}))


def _is_resolve_path(handler: Any, resource: str) -> bool:
    return resource == "api" and handler.request.path.rstrip("/").endswith("/api/resolvePath")


async def _named_kernel(handler: Any, resource: str) -> str | None:
    """The kernel a kernels or sessions request names (a session stands for its kernel)."""
    kwargs = getattr(handler, "path_kwargs", None) or {}
    if resource == "kernels":
        return kwargs.get("kernel_id")
    if resource == "sessions" and kwargs.get("session_id"):
        try:
            model = await handler.session_manager.get_session(session_id=kwargs["session_id"])
        except (web.HTTPError, LookupError, ValueError, TypeError):
            return None  # the handler answers 404 for an unknown session
        return ((model or {}).get("kernel") or {}).get("id")
    return None


def _kernel_decision(handler: Any, policy: Policy, name: str, groups: tuple[str, ...], kernel_id: str,
                     server_owner: str, resource: str) -> tuple[Decision, str, int]:
    owners: KernelOwners | None = handler.settings.get("lepton_kernel_owners")
    owner = owners.owner(kernel_id) if owners is not None else server_owner
    target = f"kernels:{kernel_id}"
    if owner == name:
        return Decision(True, f"{name} started kernel {kernel_id}", audit=False), target, 403
    if may_see_kernel(policy, name, groups, owner, server_owner):
        return Decision(True, f"{name} administers {owner}'s teams and acts on their kernel"), target, 403
    noun = "session" if resource == "sessions" else "kernel"
    return Decision(False, f"no {noun} {kernel_id} of {name}'s"), target, 404


async def _foreign_kernel_in_body(handler: Any, policy: Policy, name: str, groups: tuple[str, ...],
                                  server_owner: str) -> tuple[Decision, str, int] | None:
    """A session created or changed to use someone else's kernel is refused like that kernel."""
    from jupyter_server.services.sessions.handlers import SessionHandler, SessionRootHandler

    if handler.request.method not in ("POST", "PATCH") or not isinstance(handler, (SessionRootHandler,
                                                                                     SessionHandler)):
        return None
    body = json_body(handler)
    kernel = body.get("kernel")
    kernel_id = kernel.get("id") if isinstance(kernel, dict) else None
    path = body.get("path")
    if isinstance(handler, SessionRootHandler) and isinstance(path, str) and not kernel_id:
        # Jupyter hands back the session already open at a path, whoever opened it.
        try:
            existing = await handler.session_manager.get_session(path=path)
        except (web.HTTPError, LookupError, ValueError, TypeError):
            existing = None
        open_id = ((existing or {}).get("kernel") or {}).get("id")
        if isinstance(open_id, str) and open_id:
            decision, target, status = _kernel_decision(handler, policy, name, groups, open_id, server_owner,
                                                        "sessions")
            if not decision.allowed:
                # Not the other session's id: only that this path is not the caller's to open.
                return Decision(False, f"no session of {name}'s at {path}; open a copy in work/{name}/"), target, 404
            return None if not decision.audit else (decision, target, status)
    if not isinstance(kernel_id, str) or not kernel_id:
        return None
    decision, target, status = _kernel_decision(handler, policy, name, groups, kernel_id, server_owner, "kernels")
    return None if decision.allowed and not decision.audit else (decision, target, status)
