"""``GET /lepton/api/whoami``: the user, teams, roles, permissions and quotas."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler

AUTH_RESOURCE = "lepton:whoami"


class WhoAmIHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self):
        self.reply(self.services.whoami(self.actor))
