"""``GET /lepton/api/templates``, ``GET templates/{team}/{name}`` and ``POST templates/copy``: team
notebooks, copied into a workspace."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..templates import save_copy
from .base import LeptonHandler

AUTH_RESOURCE = "lepton:templates"


class TemplatesHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self):
        self.reply({"templates": self.services.templates(self.actor)})


class TemplateCopyHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def post(self):
        body = self.body({"team": str, "name": str}, required=("team", "name"))
        src = await self.run(self.services.template_path, self.actor, body["team"], body["name"])
        target = await save_copy(self.contents_manager, self.actor.name, body["name"], json.loads(src.read_text()))
        self.services.audit.record(self.actor.name, "templates:read", f"templates:{body['team']}/{body['name']}",
                                   "allow", copied_to=target)
        self.reply({"path": target}, status=201)


class TemplateContentHandler(LeptonHandler):
    """``GET templates/{team}/{name}``: the notebook itself (a team deployment's user server copies it)."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self, team: str, name: str):
        src = await self.run(self.services.template_path, self.actor, team, name)
        self.services.audit.record(self.actor.name, "templates:read", f"templates:{team}/{name}", "allow",
                                   fetched=True)
        self.reply({"team": team, "name": name, "content": json.loads(src.read_text())})
