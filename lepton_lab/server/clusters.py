"""Cluster routes: list, create, get, scale, stop, allocation, live stream, credentials, profiles."""

from __future__ import annotations

import asyncio
import json
import math
import re

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web, websocket

from .. import config
from ..errors import LeptonError
from ..security.authz import RequestTrace
from ..services import Actor
from .base import LeptonHandler, json_error

AUTH_RESOURCE = "lepton:clusters"
#: Cluster ids and names as they appear in URLs; anything else is a 404 before any lookup.
CLUSTER_ID = r"(?P<cluster_id>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
        body = self.body({"team": str, "profile": (str, dict), "name": str, "workers": dict, "gpus": (int, float),
                          "threads": int, "memory": str}, required=("team",))
        name = body.get("name")
        if name is not None and not _NAME.match(name):
            raise web.HTTPError(400, "name: letters, digits, '_', '.', '-' (at most 64)")
        workers = body.get("workers") or {}
        for kind, n in workers.items():
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 256:
                raise web.HTTPError(400, f"workers.{kind}: a whole number from 0 to 256")
        gpus = body.get("gpus")
        if gpus is not None and (not isinstance(gpus, int) or not 0 <= gpus <= 64):
            raise web.HTTPError(400, "gpus: a whole number from 0 to 64")
        threads = body.get("threads")
        if threads is not None and not 1 <= threads <= 256:
            raise web.HTTPError(400, "threads: a whole number from 1 to 256")
        if body.get("memory") is not None:
            check_memory(body["memory"])
        services = self.services
        managed = await self.run(services.create_cluster, self.actor, team=body["team"],
                                 profile=body.get("profile") or config.DEFAULT_PROFILE, name=name,
                                 workers=workers, gpus=gpus, threads=body.get("threads"),
                                 memory=body.get("memory"))
        self.reply(services.describe(managed.info()), status=201)


#: Largest memory a worker may ask for.
MAX_MEMORY = 2**50


def check_memory(text: str) -> None:
    """400 unless ``text`` is a size such as ``4GiB`` between 1 MiB and 1 PiB."""
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(text)
    except (ValueError, TypeError, OverflowError):
        size = None
    if size is None or not 2**20 <= size <= MAX_MEMORY:
        raise web.HTTPError(400, "memory: a size such as 4GiB, from 1MiB to 1PiB")


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
        body = self.body({"site": str, "workers": (int, float)}, required=("site", "workers"))
        if not isinstance(body["workers"], int) or not 0 <= body["workers"] <= 256:
            raise web.HTTPError(400, "workers: a whole number from 0 to 256")
        c = await self.run(self.services.scale_cluster, self.actor, cluster_id, body["site"], body["workers"])
        self.reply(self.services.describe(c.info()))

    @web.authenticated
    @authorized
    async def delete(self, cluster_id: str):
        await self.run(self.services.stop_cluster, self.actor, cluster_id)
        self.set_status(204)
        self.finish()


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


class ProfilesHandler(ClusterBase):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply({"profiles": [p.to_dict() for p in self.services.profiles()]})


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
            raise web.HTTPError(e.status, str(e).replace("%", "%%")) from None
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
