"""``GET /lepton/api/audit``: the audit log, filtered; ``audit:read`` in some teams reads those teams' lines."""

from __future__ import annotations

from datetime import datetime, timezone

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler

AUTH_RESOURCE = "lepton:audit"
FILTERS = ("user", "action", "outcome", "resource", "since")


def parse_since(text: str) -> datetime:
    """An ISO date or time (naive means UTC); 400 otherwise."""
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise web.HTTPError(400, "since: an ISO date or time such as 2025-01-31 or 2025-01-31T12:00:00Z") from None
    return since if since.tzinfo is not None else since.replace(tzinfo=timezone.utc)


def line_team(services, entry: dict) -> str | None:
    """The team an audit line is about, when it names one."""
    detail = entry.get("detail") or {}
    if isinstance(detail.get("team"), str):
        return detail["team"]
    resource = str(entry.get("resource", ""))
    kind, _, rest = resource.partition(":")
    if kind in ("models", "templates"):
        return rest.split("/", 1)[0] or None
    if kind == "team":
        return rest or None
    if kind in ("contents", "files", "nbconvert") and rest.split("/", 1)[0] in ("teams", "templates"):
        parts = rest.split("/")
        return parts[1] if len(parts) > 1 else None
    if kind == "clusters":
        key = rest.removeprefix("new:")
        if key != rest:
            return key
        key = rest.split("/", 1)[0]
        record = services.records.get(key) or next(
            (r for r in list(services.records.values()) if r.get("name") == key), None)
        return record.get("team") if record else None
    return None


def line_visible(services, entry: dict, teams: set[str]) -> bool:
    """A line about one of ``teams``, or about no team by a member of one of them."""
    team = line_team(services, entry)
    if team is not None:
        return team in teams
    return bool(teams & set(services.policy.teams_of(str(entry.get("user", "")))))


class AuditHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self):
        unknown = sorted(set(self.request.arguments) - set(FILTERS) - {"limit", "verify", "token"})
        if unknown:
            raise web.HTTPError(400, f"unknown filter {unknown[0]!r} (filters: {', '.join(FILTERS)}, limit, verify)")
        kwargs = {k: self.get_argument(k) for k in FILTERS if self.get_argument(k, None) is not None}
        if "since" in kwargs:
            kwargs["since"] = parse_since(kwargs["since"])
        limit = self.get_argument("limit", "200")
        if not (limit.isascii() and limit.isdigit()) or not 0 < int(limit) <= 10_000:
            raise web.HTTPError(400, "limit: a whole number from 1 to 10000")
        services, actor = self.services, self.actor
        teams = [t for t in services.policy.teams if services.allowed(actor, "audit:read", t)]
        if len(teams) == len(services.policy.teams):
            entries = await self.run(lambda: list(services.audit.entries(limit=int(limit), **kwargs)))
        else:
            # audit:read in some teams reads the lines of those teams and their members only.
            seen = await self.run(lambda: [e for e in services.audit.entries(**kwargs)
                                           if line_visible(services, e, set(teams))])
            entries = seen[-int(limit):]
        out = {"entries": entries}
        if self.get_argument("verify", "") in ("1", "true"):
            result = await self.run(services.audit.verify)
            out["verify"] = {"ok": result.ok, "entries": result.entries, "bad_line": result.bad_line,
                             "reason": result.reason}
        self.reply(out)
