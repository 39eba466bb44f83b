"""``GET /lepton/api/templates`` and ``POST templates/copy``: team notebooks, copied into a workspace."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ensure_async
from tornado import web

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
        cm = self.contents_manager
        folder = f"work/{self.actor.name}"
        for part in ("work", folder):
            if not await ensure_async(cm.dir_exists(part)):
                await ensure_async(cm.save({"type": "directory"}, part))
        target = f"{folder}/{body['name']}.ipynb"
        n = 1
        while await ensure_async(cm.file_exists(target)):
            target = f"{folder}/{body['name']}-{n}.ipynb"
            n += 1
        content = json.loads(src.read_text())
        await ensure_async(cm.save({"type": "notebook", "format": "json", "content": content}, target))
        self.services.audit.record(self.actor.name, "templates:read", f"templates:{body['team']}/{body['name']}",
                                   "allow", copied_to=target)
        self.reply({"path": target}, status=201)
