"""Cluster routes: list, create, get, scale, stop, start again, allocation, live stream, credentials, profiles."""

from __future__ import annotations

import asyncio
import json
import math

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web, websocket

from .. import config
from ..cluster.profile_schema import SITE_SCHEMA, WORKERS
from ..errors import LeptonError
from ..schemas import object_schema
from ..security.authz import RequestTrace
from ..services import Actor
from ..services.cluster_request import CREATE_REQUEST
from .base import LeptonHandler, http_error, json_error

AUTH_RESOURCE = "lepton:clusters"
#: Cluster ids and names as they appear in URLs; anything else is a 404 before any lookup.
CLUSTER_ID = r"(?P<cluster_id>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
#: ``POST clusters/<id>/worker-certificate``: the site a joining machine serves, and the names it answers to.
WORKER_CERT_BODY = object_schema({
    "site": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
             "x-reason": "a site name: letters, digits, '_', '.', '-'; got {value!r}"},
    "hosts": {"type": ["array", "null"], "maxItems": 16,
              "items": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,253}$"},
              "x-reason": "host names or addresses the worker answers to; got {value!r}"},
}, required=("site",))
#: ``PATCH clusters/<id>``: the workers of one site.
SCALE_BODY = object_schema({"site": {"type": "string", "x-reason": "wrong type: a site name, got {kind}"},
                            "workers": WORKERS}, required=("site", "workers"))


class ClusterBase(LeptonHandler):
    auth_resource = AUTH_RESOURCE


class ClustersHandler(ClusterBase):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply({"clusters": self.services.visible_clusters(self.actor)})

    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body(CREATE_REQUEST)
        services = self.services
        managed = await self.run(services.create_cluster, self.actor, team=body["team"],
                                 profile=body.get("profile") or config.DEFAULT_PROFILE, name=body.get("name"),
                                 workers=body.get("workers") or {}, gpus=body.get("gpus"),
                                 threads=body.get("threads"), memory=body.get("memory"))
        self.reply(services.describe(managed.info()), status=201)


def stream_interval(text: str | None) -> float:
    """Seconds between snapshots: a finite number from 0.2 to 30 (400 otherwise)."""
    if text is None:
        return config.REFRESH_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.2 <= value <= 30:
        raise web.HTTPError(400, "interval: seconds between snapshots, a number from 0.2 to 30")
    return value


class ClusterHandler(ClusterBase):
    @web.authenticated
    @authorized
    async def get(self, cluster_id: str):
        c = await self.run(self.services.cluster, self.actor, cluster_id)
        self.reply(self.services.describe(c.info()))

    @web.authenticated
    @authorized
    async def patch(self, cluster_id: str):
        body = self.json_body(SCALE_BODY)
        c = await self.run(self.services.scale_cluster, self.actor, cluster_id, body["site"], body["workers"])
        self.reply(self.services.describe(c.info()))

    @web.authenticated
    @authorized
    async def delete(self, cluster_id: str):
        await self.run(self.services.stop_cluster, self.actor, cluster_id)
        self.set_status(204)
        self.finish()


class StartAgainHandler(ClusterBase):
    """``POST``: a stopped cluster started again with its settings, serving again what it served."""

    @web.authenticated
    @authorized
    async def post(self, cluster_id: str):
        self.json_body(object_schema({}))
        managed, redeployed, missed = await self.run(self.services.start_again, self.actor, cluster_id)
        self.reply({**self.services.describe(managed.info()), "redeployed": redeployed, "not_redeployed": missed},
                   status=201)


class AllocationHandler(ClusterBase):
    @web.authenticated
    @authorized
    async def get(self, cluster_id: str):
        self.reply(await self.run(self.services.snapshot, self.actor, cluster_id))


class CredentialsHandler(ClusterBase):
    """A client certificate runs Dask tasks as the account the cluster's workers run under."""

    @web.authenticated
    @authorized
    async def get(self, cluster_id: str):
        self.reply(await self.run(self.services.credentials, self.actor, cluster_id))


class WorkerCertificateHandler(ClusterBase):
    """A worker certificate bound to one site, for a machine the caller joins to the cluster."""

    @web.authenticated
    @authorized
    async def post(self, cluster_id: str):
        body = self.json_body(WORKER_CERT_BODY)
        self.reply(await self.run(self.services.worker_certificate, self.actor, cluster_id, body["site"],
                                  tuple(body.get("hosts") or ("127.0.0.1", "localhost"))))


class ProfilesHandler(ClusterBase):
    """The profiles, and the schemas of a cluster request, a scale request and a site (the forms' bounds)."""

    @web.authenticated
    @authorized
    async def get(self):
        self.reply({"profiles": [p.to_dict() for p in self.services.profiles()],
                    "request": CREATE_REQUEST, "scale": SCALE_BODY, "site": SITE_SCHEMA})


class StreamHandler(JupyterHandler, websocket.WebSocketHandler):
    """A snapshot about once a second while the socket is open."""

    auth_resource = AUTH_RESOURCE

    async def pre_get(self):
        ok = await ensure_async(self.authorizer.is_authorized(self, self.current_user, "execute", AUTH_RESOURCE))
        if not ok:
            raise web.HTTPError(403)

    def write_error(self, status_code: int, **kwargs) -> None:
        # A refused handshake answers like every Lepton route: one line of JSON.
        json_error(self, status_code, **kwargs)

    @ws_authenticated
    async def get(self, cluster_id: str):
        RequestTrace.of(self)
        await ensure_async(self.pre_get())
        self.interval = stream_interval(self.get_argument("interval", None))
        services = self.settings["lepton"]
        try:
            services.cluster(Actor.of(self.current_user), cluster_id)
        except LeptonError as e:
            if e.status in (403, 404) and not RequestTrace.of(self).denied:
                await services.record_async(self.current_user.username, "execute", f"clusters:{cluster_id}",
                                            "deny", reason=str(e), request_id=RequestTrace.of(self).id,
                                            method="GET", url=self.request.path)
            raise http_error(e) from None
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise web.HTTPError(400, "this route is a WebSocket: connect with an Upgrade: websocket request")
        self.cluster_id = cluster_id
        res = super().get(cluster_id)
        if res is not None:
            await res

    def open(self, cluster_id: str) -> None:  # type: ignore[override]
        self.task = asyncio.ensure_future(self._push())

    async def _push(self) -> None:
        services = self.settings["lepton"]
        actor = Actor.of(self.current_user)
        loop = asyncio.get_running_loop()
        interval = self.interval
        while True:
            started = loop.time()
            try:
                snap = await loop.run_in_executor(None, services.snapshot, actor, self.cluster_id)
            except LeptonError as e:
                self.close(code=1011, reason=str(e)[:120])
                return
            try:
                await self.write_message(json.dumps(snap))
            except websocket.WebSocketClosedError:
                return
            # One snapshot per interval, however long taking it took.
            await asyncio.sleep(max(interval - (loop.time() - started), 0.05))

    def on_message(self, message):  # the stream is one-way
        pass

    def on_close(self) -> None:
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()
