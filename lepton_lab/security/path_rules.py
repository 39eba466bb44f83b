"""Who may read or write which contents path: team folders, templates, users' work.

The rules of :mod:`lepton_lab.security.authz` for every door that takes a path
(contents incl. ``copy_from``, rename and checkpoints, ``/files``, ``/view``,
``/nbconvert``), decided on the path the contents manager will act on.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from jupyter_server.utils import url_path_join
from tornado.escape import url_unescape

from .policy import ROLE_RANKS, Policy, role_rank

#: Folders of the server's root whose second component is a team (or, for work, a user).
TEAM_FOLDERS = ("templates", "teams")
#: First path component -> kind of zone below it.
ZONE_FOLDERS = {"teams": "team", "templates": "templates", "work": "work"}
@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    audit: bool = True


def contents_path(handler: Any) -> str | None:
    """The contents path a request touches, or None if it is not a contents/files request."""
    base = handler.settings.get("base_url", "/")
    path = handler.request.path
    for prefix in ("api/contents", "files", "api/nbconvert"):
        root = url_path_join(base, prefix)
        if path == root or path.startswith(root + "/"):
            return path[len(root):].strip("/")
    return None


def normalise_path(path: str) -> str:
    """The path the contents manager acts on, resolved the way it resolves it.

    ``path`` is what tornado hands the handler (percent-decoded once). Empty
    segments and ``.`` drop out, ``..`` removes the segment before it, and the
    text is NFC-normalised. A path that climbs above the root raises ValueError.
    """
    text = unicodedata.normalize("NFC", path)
    if "\x00" in text:
        raise ValueError("a path may not hold a NUL character")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ValueError("the path climbs above the server's root")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


@dataclass(frozen=True)
class Zone:
    """Whose a path is: ``shared``, a ``team`` workspace, a team's ``templates``, a user's ``work``,
    or one of those top ``folder``s itself (``name`` is the team, user or folder)."""

    kind: str
    name: str = ""


def zone_of(policy: Policy, path: str) -> Zone:
    """The zone of a normalised path; folder and team names match whatever their case."""
    parts = path.split("/") if path else []
    kind = ZONE_FOLDERS.get(parts[0].casefold()) if parts else None
    if kind is None:
        return Zone("shared")
    if len(parts) == 1:
        return Zone("folder", parts[0].casefold())
    name = parts[1]
    if kind != "work":
        name = {t.casefold(): t for t in policy.teams}.get(name.casefold(), name)
    return Zone(kind, name)


def _admin_everywhere(policy: Policy, user: str, groups: tuple[str, ...]) -> bool:
    return bool(policy.teams) and all(policy.allows(user, groups, "policy:admin", t) for t in policy.teams)


def decide_path(policy: Policy, user: str, groups: tuple[str, ...], action: str, path: str,
                server_owner: str | None = None) -> Decision:
    """May ``user`` read or write (create, overwrite, delete) the normalised ``path``?"""
    zone = zone_of(policy, path)
    if zone.kind == "shared":
        return Decision(True, "outside team folders", audit=False)
    if zone.kind == "folder":
        if action == "read":
            return Decision(True, f"{zone.name}/ lists its folders", audit=False)
        if user == server_owner or _admin_everywhere(policy, user, groups):
            return Decision(True, f"{user} administers every team")
        return Decision(False, f"{zone.name}/ holds every team's or user's folders; only an admin of "
                               "every team changes it")
    if zone.kind == "work":
        if zone.name.casefold() == user.casefold():
            return Decision(True, f"work/{user} is {user}'s own", audit=False)
        return Decision(False, f"work/{zone.name} is {zone.name}'s own folder; {user} works in work/{user}")
    team = zone.name
    folder = "teams" if zone.kind == "team" else "templates"
    if team not in policy.teams:
        return Decision(False, f"{folder}/{team} belongs to no team of the policy")
    if zone.kind == "templates":
        perm = "templates:read" if action == "read" else "policy:admin"
        return Decision(policy.allows(user, groups, perm, team), policy.explain(user, groups, perm, team))
    roles = policy.roles_of(user, groups)
    if team not in roles:
        return Decision(False, f"{user} is not a member of team {team}")
    if action != "read" and role_rank(roles[team]) < ROLE_RANKS["analyst"]:
        return Decision(False, f"{user} has role {roles[team]} in {team}, which may only read")
    return Decision(True, f"{user} is {roles[team]} in {team}")


def decide_transfer(policy: Policy, user: str, groups: tuple[str, ...], source: str, target: str) -> Decision:
    """May a copy or rename take ``source`` to ``target`` (both normalised)? Each end is checked apart."""
    src, dst = zone_of(policy, source), zone_of(policy, target)
    if src.kind not in ("team", "templates") or src == dst:
        return Decision(True, "stays in its zone", audit=False)
    if dst == Zone("team", src.name) or (dst.kind == "work" and dst.name.casefold() == user.casefold()):
        return Decision(True, f"stays with team {src.name} or its member", audit=False)
    if src.name in policy.teams and policy.allows(user, groups, "policy:admin", src.name):
        return Decision(True, f"{user} administers {src.name}")
    return Decision(False, f"{source} belongs to team {src.name}: copy or move it only within "
                           f"teams/{src.name}/ or into work/{user}/")


def _raw_path(handler: Any, resource: str) -> str | None:
    """The path argument as tornado decoded it for the handler; None when there is none."""
    kwargs = getattr(handler, "path_kwargs", None) or {}
    if "path" in kwargs:
        return kwargs["path"] or ""
    args = getattr(handler, "path_args", None) or []
    if args and resource == "contents":
        return args[-1] or ""
    if kwargs or args:
        return None
    raw = contents_path(handler)
    return None if raw is None else url_unescape(raw, plus=False)


def json_body(handler: Any) -> dict[str, Any]:
    try:
        data = json.loads(handler.request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def request_paths(handler: Any, resource: str, action: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a contents-like request touches: ([(action, raw path)], [(copied or moved from, to)])."""
    raw = _raw_path(handler, resource)
    checks: list[tuple[str, str]] = []
    transfers: list[tuple[str, str]] = []
    if raw is None:
        return checks, transfers
    from jupyter_server.services.contents.handlers import ContentsHandler

    contents = isinstance(handler, ContentsHandler)
    method = handler.request.method
    if contents and method == "POST":
        # A new file or a copy lands inside the folder ``raw``.
        target = f"{raw}/*"
        body = json_body(handler)
        source = body.get("copy_from")
        if isinstance(source, str):
            checks.append(("read", source))
            transfers.append((source, target))
        checks.append(("write", target))
        return checks, transfers
    checks.append((action, raw))
    if contents and method == "PATCH":
        new_path = json_body(handler).get("path")
        if isinstance(new_path, str):
            checks.append(("write", new_path))
            transfers.append((raw, new_path))
    return checks, transfers


def decide_request(policy: Policy, user: str, groups: tuple[str, ...], checks: list[tuple[str, str]],
                   transfers: list[tuple[str, str]], server_owner: str | None) -> tuple[Decision, str]:
    """The decision on every path a request touches: the first refusal, else the last audited allow."""
    result, where = Decision(True, "outside team folders", audit=False), ""
    try:
        normal = [(action, normalise_path(p)) for action, p in checks]
        moves = [(normalise_path(a), normalise_path(b)) for a, b in transfers]
    except ValueError as e:
        return Decision(False, str(e)), ""
    for action, path in normal:
        d = decide_path(policy, user, groups, action, path, server_owner)
        if not d.allowed:
            return d, path
        if d.audit or not where:
            result, where = d, path
    for source, target in moves:
        d = decide_transfer(policy, user, groups, source, target)
        if not d.allowed:
            return d, f"{source} -> {target}"
    return result, where


__all__ = ["TEAM_FOLDERS", "ZONE_FOLDERS", "Decision", "Zone", "contents_path", "decide_path", "decide_request",
           "decide_transfer", "json_body", "normalise_path", "request_paths", "zone_of"]
