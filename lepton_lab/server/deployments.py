"""Deployment routes: a model version kept loaded on a site of a cluster, and its predictions.

``POST clusters/{id}/deployments`` ``{model, version | alias, site, name?}`` starts one,
``GET`` lists them, ``DELETE clusters/{id}/deployments/{name}`` stops one, and
``POST clusters/{id}/deployments/{name}/predict`` ``{inputs}`` answers predictions.
Another team's cluster is a 404; the rules are the services'.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import LeptonHandler
from .clusters import AUTH_RESOURCE, CLUSTER_ID

DEPLOYMENT = r"(?P<name>[a-z0-9][a-z0-9_.-]{0,63})"


class DeploymentBase(LeptonHandler):
    auth_resource = AUTH_RESOURCE


class DeploymentsHandler(DeploymentBase):
    @web.authenticated
    @authorized
    async def get(self, cluster_id: str):
        self.reply({"deployments": await self.run(self.services.deployments, self.actor, cluster_id)})

    @web.authenticated
    @authorized
    async def post(self, cluster_id: str):
        body = self.body({"model": str, "version": int, "alias": str, "site": str, "name": str},
                         required=("model", "site"))
        version = body.get("version")
        if version is not None and version < 1:
            raise web.HTTPError(400, "version: a whole number from 1")
        out = await self.run(self.services.deploy, self.actor, cluster_id, model=body["model"], site=body["site"],
                             version=version, alias=body.get("alias"), name=body.get("name"))
        self.reply(out, status=201)


class DeploymentHandler(DeploymentBase):
    @web.authenticated
    @authorized
    async def delete(self, cluster_id: str, name: str):
        await self.run(self.services.undeploy, self.actor, cluster_id, name)
        self.set_status(204)
        self.finish()


class PredictHandler(DeploymentBase):
    @web.authenticated
    @authorized
    async def post(self, cluster_id: str, name: str):
        body = self.body({"inputs": list}, required=("inputs",))
        self.reply(await self.run(self.services.predict_deployed, self.actor, cluster_id, name, body["inputs"]))


def routes() -> list[tuple[str, type]]:
    base = f"clusters/{CLUSTER_ID}/deployments"
    return [
        (base, DeploymentsHandler),
        (f"{base}/{DEPLOYMENT}", DeploymentHandler),
        (f"{base}/{DEPLOYMENT}/predict", PredictHandler),
    ]
