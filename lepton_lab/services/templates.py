"""Notebook templates for a known user: another team's templates are not even named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NotFound
from .base import Actor, ServicesBase


class TemplateServices(ServicesBase):
    """The template verbs of :class:`~lepton_lab.services.Services`."""

    def templates(self, who: Actor) -> list[dict[str, Any]]:
        from ..templates import list_templates

        return [t for t in list_templates(self.templates_dir)
                if self.allowed(who, "templates:read", t["team"])]

    def template_path(self, who: Actor, team: str, name: str) -> Path:
        from ..templates import template_file

        if team not in self.policy.teams:
            raise NotFound(f"no template {team}/{name}")
        if not self.allowed(who, "templates:read", team):
            # Another team's templates are not even named.
            self.audit.record(who.name, "templates:read", f"templates:{team}/{name}", "deny",
                              reason=self.policy.explain(who.name, who.groups, "templates:read", team))
            raise NotFound(f"no template {team}/{name}")
        return template_file(self.templates_dir, team, name)
