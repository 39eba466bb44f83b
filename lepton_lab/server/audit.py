"""``GET /lepton/api/audit``: the audit log, filtered (admins only)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler

AUTH_RESOURCE = "lepton:audit"
FILTERS = ("user", "action", "outcome", "resource", "since")


class AuditHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self):
        unknown = sorted(set(self.request.arguments) - set(FILTERS) - {"limit", "verify", "token"})
        if unknown:
            raise web.HTTPError(400, f"unknown filter {unknown[0]!r} (filters: {', '.join(FILTERS)}, limit, verify)")
        kwargs = {k: self.get_argument(k) for k in FILTERS if self.get_argument(k, None) is not None}
        limit = self.get_argument("limit", "200")
        if not limit.isdigit() or not 0 < int(limit) <= 10_000:
            raise web.HTTPError(400, "limit: a whole number from 1 to 10000")
        services = self.services
        entries = await self.run(lambda: list(services.audit.entries(limit=int(limit), **kwargs)))
        out = {"entries": entries}
        if self.get_argument("verify", "") in ("1", "true"):
            result = await self.run(services.audit.verify)
            out["verify"] = {"ok": result.ok, "entries": result.entries, "bad_line": result.bad_line,
                             "reason": result.reason}
        self.reply(out)
