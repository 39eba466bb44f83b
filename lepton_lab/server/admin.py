"""Admin routes: ``POST /lepton/api/admin/revoke`` cuts a user off, ``POST /lepton/api/admin/policy`` reloads.

Both need ``policy:admin``. Revoking reaches the clusters of the teams the caller
administers: the user's client certificates are revoked there, their open connections
closed at once and new ones refused. Reloading reads the policy file again (the server
also does within one watch period of an edit); a file that does not validate is a 400
with its one-line error, and the policy in force stays.
"""

from __future__ import annotations

import re

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler

AUTH_RESOURCE = "lepton:admin"
#: A user name as the policy and the certificates spell it.
USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")


class AdminBase(LeptonHandler):
    auth_resource = AUTH_RESOURCE


class RevokeHandler(AdminBase):
    @web.authenticated
    @authorized
    async def post(self):
        body = self.body({"user": str}, required=("user",))
        user = body["user"]
        if not isinstance(user, str) or not USER.match(user):
            raise web.HTTPError(400, "user: a user name (letters, digits, _ . @ + -)")
        revoked = await self.run(self.services.revoke_for, self.actor, user)
        self.reply({"user": user, "certificates": revoked, "revoked": sum(revoked.values())})


class PolicyReloadHandler(AdminBase):
    @web.authenticated
    @authorized
    async def post(self):
        self.body({})
        done = await self.run(self.services.reload_policy, self.actor)
        self.reply(done.to_dict())
