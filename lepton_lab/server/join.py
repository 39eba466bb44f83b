"""``POST /lepton/api/join``: a worker machine trades a one-time join token for a certificate.

The joining machine has no Jupyter identity; the single-use token, issued by an
admin with ``lepton-lab join-token``, is its credential. Every redemption, good
or bad, is audited.
"""

from __future__ import annotations

import re

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from ..schemas import object_schema
from .base import LeptonHandler

HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
_HOSTS = "up to 16 host names or IP addresses; got {value!r}"
#: The token, the site the worker means to join as, the names its certificate may carry.
JOIN_BODY = object_schema({
    "token": {"type": "string", "x-reason": "wrong type: the join token, got {kind}"},
    "site": {"type": ["string", "null"], "x-reason": "wrong type: a site name, got {kind}"},
    "hosts": {"type": ["array", "null"], "maxItems": 16, "x-reason": _HOSTS,
              "items": {"type": "string", "pattern": HOST.pattern, "x-reason": _HOSTS}},
}, required=("token",))


class JoinHandler(LeptonHandler):
    auth_resource = "lepton:join"

    def check_xsrf_cookie(self) -> None:
        # A token-bearing machine-to-machine call: no browser, no cookie to forge.
        return None

    @allow_unauthenticated
    async def post(self):
        body = self.json_body(JOIN_BODY)
        hosts = tuple(body.get("hosts") or ["127.0.0.1", "localhost"])
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
