"""``GET|POST /lepton/api/studies/{team}/{name}/journal``: a study's Optuna journal, for remote kernels.

A kernel that reaches the services over REST (a Jupyter server's, the team
deployment's control plane) keeps its hyper-parameter studies there: its Optuna
reads the journal from an entry number on and appends new entries, each call
checked against ``clusters:use`` in the team and audited.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler

AUTH_RESOURCE = "lepton:studies"
STUDY = r"(?P<team>[^/]+)/(?P<name>[^/]+)"


class StudyJournalHandler(LeptonHandler):
    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self, team: str, name: str):
        raw = self.get_query_argument("from", "0")
        if not raw.isdigit():
            raise web.HTTPError(400, f"'from' must be a whole number >= 0, got {raw!r}")
        logs = await self.run(self.services.studies().read_journal, self.actor, team, name, int(raw))
        self.reply({"logs": logs})

    @web.authenticated
    @authorized
    async def post(self, team: str, name: str):
        body = self.body({"logs": list}, required=("logs",))
        count = await self.run(self.services.studies().append_journal, self.actor, team, name, body["logs"])
        self.reply({"appended": count})
