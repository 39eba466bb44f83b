"""``GET /lepton/api/privacy/{team}`` and ``POST /lepton/api/privacy/{team}/charge``: a team's privacy ledger.

A kernel that reaches the services over REST (a Jupyter server's, the team
deployment's control plane) charges its differentially private runs here, so the
budget it is held to is the server's policy and the ledger the server's: a
charge names the mechanism (noise multiplier, sampling rate, steps) and the
server works out its ε; one that would take the dataset past its budget is a
403 whose one line says what was spent and on what. Reading needs
``clusters:read`` in the team, charging ``clusters:use``; every charge and
refusal is audited.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler

AUTH_RESOURCE = "lepton:privacy"
TEAM = r"(?P<team>[^/]+)"
CHARGE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "dataset": str, "noise_multiplier": (int, float), "sample_rate": (int, float), "steps": int, "what": str,
    "delta": (int, float)}


class PrivacyHandler(LeptonHandler):
    """The team's budget and, per dataset, budget, ε spent and runs (``?dataset=`` for one)."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self, team: str):
        dataset = self.get_query_argument("dataset", None)
        self.reply(await self.run(self.services.privacy().overview, self.actor, team, dataset))


class PrivacyChargeHandler(LeptonHandler):
    """Charge one run's mechanism to a dataset: its ε, the total after it and the budget; 403 past the budget."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def post(self, team: str):
        body = self.body(CHARGE_FIELDS, required=("dataset", "noise_multiplier", "steps", "what"))
        sample_rate = body.get("sample_rate")
        spend = await self.run(self.services.privacy().charge, self.actor, team, body["dataset"],
                               noise_multiplier=body["noise_multiplier"],
                               sample_rate=1.0 if sample_rate is None else sample_rate, steps=body["steps"],
                               what=body["what"], delta=body.get("delta"))
        self.reply(spend)
