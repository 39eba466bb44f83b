"""``GET /lepton/api/templates``, ``GET templates/{team}/{name}`` and ``POST templates/copy``: team
notebooks, copied into a workspace."""

from __future__ import annotations

import json
from typing import Any

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


async def save_copy(cm: Any, user: str, name: str, content: dict[str, Any]) -> str:
    """Save a template's notebook as ``work/<user>/<name>[-n].ipynb`` (never over a file); its path."""
    folder = f"work/{user}"
    for part in ("work", folder):
        if not await ensure_async(cm.dir_exists(part)):
            await ensure_async(cm.save({"type": "directory"}, part))
    target = f"{folder}/{name}.ipynb"
    n = 1
    while await ensure_async(cm.file_exists(target)):
        target = f"{folder}/{name}-{n}.ipynb"
        n += 1
    await ensure_async(cm.save({"type": "notebook", "format": "json", "content": content}, target))
    return target
