"""Deployment routes: a model version kept loaded on a site of a cluster, and its predictions.

``POST clusters/{id}/deployments`` ``{model, version | alias, site, name?}`` starts one,
``GET`` lists them, ``DELETE clusters/{id}/deployments/{name}`` stops one, and
``POST clusters/{id}/deployments/{name}/predict`` ``{inputs}`` answers predictions (a body of
up to 16 MiB). A request with an ``X-Lepton-Job`` header (32 hex digits) can be stopped:
``DELETE clusters/{id}/deployments/{name}/predict/{job}`` by the same user, or the client
closing the connection, cancels its task and frees the worker running it.
Another team's cluster is a 404; the rules are the services'.
"""

from __future__ import annotations

import logging
import re

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop

from ..errors import NotFound
from .base import PREDICT_MAX_BODY, LeptonHandler
from .clusters import AUTH_RESOURCE, CLUSTER_ID

DEPLOYMENT = r"(?P<name>[a-z0-9][a-z0-9_.-]{0,63})"
JOB_ID = r"[0-9a-f]{32}"
JOB = rf"(?P<job>{JOB_ID})"
#: The header naming a prediction so that it can be cancelled.
JOB_HEADER = "X-Lepton-Job"

log = logging.getLogger(__name__)


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
    max_body = PREDICT_MAX_BODY
    _job: str | None = None

    @web.authenticated
    @authorized
    async def post(self, cluster_id: str, name: str):
        body = self.body({"inputs": list}, required=("inputs",))
        job = self.request.headers.get(JOB_HEADER)
        if job is not None and not re.fullmatch(JOB_ID, job):
            raise web.HTTPError(400, f"{JOB_HEADER}: 32 hex digits (a uuid4 hex), got {job[:40]!r}")
        self._job = job
        try:
            out = await self.run(self.services.predict_deployed, self.actor, cluster_id, name, body["inputs"], job=job)
        finally:
            self._job = None
        self.reply(out)

    def on_connection_close(self) -> None:
        # The client went away (an interrupted kernel, a closed tab): nobody waits for the answer.
        job, self._job = self._job, None
        if job is None:
            return
        actor = self.actor

        def cancel() -> None:
            try:
                log.info("prediction %s: the client went away; %s", job, self.services.cancel_predict(actor, job))
            except NotFound:
                pass

        IOLoop.current().run_in_executor(None, cancel)


class PredictJobHandler(DeploymentBase):
    @web.authenticated
    @authorized
    async def delete(self, cluster_id: str, name: str, job: str):
        self.reply({"message": await self.run(self.services.cancel_predict, self.actor, job)})


def routes() -> list[tuple[str, type]]:
    base = f"clusters/{CLUSTER_ID}/deployments"
    return [
        (base, DeploymentsHandler),
        (f"{base}/{DEPLOYMENT}", DeploymentHandler),
        (f"{base}/{DEPLOYMENT}/predict", PredictHandler),
        (f"{base}/{DEPLOYMENT}/predict/{JOB}", PredictJobHandler),
    ]
