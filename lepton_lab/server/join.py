"""``POST /lepton/api/join``: a worker machine trades a one-time join token for a certificate.

The joining machine has no Jupyter identity; the single-use token, issued by an
admin with ``lepton-lab join-token``, is its credential. Every redemption, good
or bad, is audited.
"""

from __future__ import annotations

import re

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from .base import LeptonHandler

HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")


class JoinHandler(LeptonHandler):
    auth_resource = "lepton:join"

    def check_xsrf_cookie(self) -> None:
        # A token-bearing machine-to-machine call: no browser, no cookie to forge.
        return None

    @allow_unauthenticated
    async def post(self):
        body = self.body({"token": str, "site": str, "hosts": list}, required=("token",))
        hosts = tuple(h for h in (body.get("hosts") or ["127.0.0.1", "localhost"]) if isinstance(h, str))
        if not hosts or not all(HOST.match(h) for h in hosts) or len(hosts) > 16:
            raise web.HTTPError(400, "hosts: up to 16 host names or IP addresses")
        services = self.services
        try:
            out = await self.run(services.redeem_join, body["token"], hosts)
        except web.HTTPError as e:
            services.audit.record("anonymous", "clusters:join", "clusters:?", "deny",
                                  reason=e.log_message % e.args if e.args else e.log_message,
                                  remote=self.request.remote_ip)
            raise
        if body.get("site") and body["site"] != out["site"]:
            raise web.HTTPError(400, f"this token admits a worker of site {out['site']}, not {body['site']}")
        self.reply(out)
