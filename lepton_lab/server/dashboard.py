"""A cluster's Dask dashboard through the Jupyter server: ``<base_url>lepton/dashboard/<cluster_id>/<path>``.

The dashboard listens on loopback with no login of its own; this route serves it
under the Jupyter user's identity, checked against ``clusters:read`` like every
cluster route (another team's cluster is a 404). Pages, static files and
bokeh's WebSocket are forwarded as they are: the dashboard's links are relative,
so they stay under this prefix.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, httputil, web, websocket

from ..errors import LeptonError
from ..security.authz import RequestTrace
from ..services import Actor
from .base import http_error, json_error
from .clusters import AUTH_RESOURCE, CLUSTER_ID

#: Request headers never passed to the dashboard: Jupyter's credentials, hop-by-hop headers.
_DROP_REQUEST = {"cookie", "authorization", "host", "connection", "upgrade", "keep-alive", "te", "trailer",
                 "transfer-encoding", "proxy-authorization", "origin", "x-xsrftoken",
                 "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                 "sec-websocket-protocol"}
#: Response headers the dashboard's answer keeps (its body is passed on as it comes, encoded or not).
_KEEP_RESPONSE = {"content-type", "content-length", "content-encoding", "cache-control", "etag", "last-modified",
                  "expires", "location", "content-disposition", "vary"}
#: Bytes gathered from the dashboard before they are sent on (fewer, larger writes).
FLUSH_BYTES = 256 * 1024
#: What tornado's client reads at once: a chunk this size means more is already waiting.
_FULL_CHUNK = 64 * 1024
#: Paths of the libraries' own files below a dashboard (bokeh's ``static/``, distributed's ``statics/``).
_STATIC = ("/static/", "/statics/")
#: The libraries' files kept in memory after a first load: bytes in all, bytes of one file.
_CACHE_BYTES, _CACHE_FILE_BYTES = 32 * 2**20, 8 * 2**20
#: Seconds to wait for the dashboard to answer or accept a WebSocket.
CONNECT_TIMEOUT = 10.0


class AssetCache:
    """The dashboard's immutable library files (bokeh's JS, its CSS), by dashboard and path.

    They are the same for every page of every pane, and a browser without them in its
    own cache asks for about 2 MB each time; kept here once they came through whole with a
    200 that lets them be cached. Oldest first out past ``_CACHE_BYTES``.
    """

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[list[tuple[str, str]], bytes]] = {}
        self.size = 0

    def get(self, key: tuple[str, str]) -> tuple[list[tuple[str, str]], bytes] | None:
        return self.items.get(key)

    def put(self, key: tuple[str, str], headers: list[tuple[str, str]], body: bytes) -> None:
        if key in self.items or len(body) > _CACHE_FILE_BYTES:
            return
        while self.items and self.size + len(body) > _CACHE_BYTES:
            _, old = self.items.pop(next(iter(self.items)))
            self.size -= len(old)
        self.items[key] = (headers, body)
        self.size += len(body)

    def forget(self, origin: str) -> None:
        """Drop a dashboard's files (it stopped; another may take its port)."""
        for key in [k for k in self.items if k[0] == origin]:
            self.size -= len(self.items.pop(key)[1])


ASSETS = AssetCache()


def cacheable(path: str, status: int, headers: httputil.HTTPHeaders) -> bool:
    control = headers.get("Cache-Control", "").lower()
    # An encoded body suits only clients that asked for that encoding: not kept.
    return (status == 200 and path.startswith(_STATIC) and "max-age" in control
            and "no-store" not in control and "private" not in control and "Content-Encoding" not in headers)


def route() -> tuple[str, type]:
    """The proxied route, relative to ``<base_url>lepton/dashboard/``."""
    return (CLUSTER_ID + r"(?P<path>/.*)?", DashboardProxyHandler)


class DashboardProxyHandler(JupyterHandler, websocket.WebSocketHandler):
    """GET and HEAD are forwarded over HTTP, an ``Upgrade: websocket`` GET as a WebSocket."""

    auth_resource = AUTH_RESOURCE
    upstream: websocket.WebSocketClientConnection | None = None

    def get_login_url(self) -> str:
        # A pane in an iframe has no login page to go to: no identity is a 401.
        raise web.HTTPError(401, "sign in first: a token or a login cookie")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        json_error(self, status_code, **kwargs)

    def check_xsrf_cookie(self) -> None:
        if self._jupyter_current_user is None:
            raise web.HTTPError(401, "sign in first: a token or a login cookie")
        return super().check_xsrf_cookie()

    # -- who may see it --------------------------------------------------------------------

    async def _dashboard(self, cluster_id: str, path: str | None) -> str:
        """The dashboard's origin (``http://127.0.0.1:<port>``) if the user may read the cluster.

        A page of the dashboard is a decision of the server's authorizer (audited like every
        cluster read); its WebSocket (the same page's data) and the libraries' static files
        (bokeh's JS, the dashboard's CSS, the same for every cluster) are checked against the
        policy without an audit line each.
        """
        RequestTrace.of(self)
        services = self.settings["lepton"]
        user = self.current_user
        if user is None:
            raise web.HTTPError(401, "sign in first: a token or a login cookie")
        if not self._is_library_or_socket(path) and not await ensure_async(
                self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE)):
            await self._audit(cluster_id, "not allowed to read clusters")
            raise web.HTTPError(403, "not allowed to read clusters")
        try:
            # Dictionary lookups and the policy, nothing that waits: a refusal here writes no file
            # (another team's cluster is NotFound before any permission is checked).
            c = services.cluster(Actor.of(user), cluster_id, "clusters:read")
        except LeptonError as e:
            if e.status in (403, 404):
                await self._audit(cluster_id, str(e))
            raise http_error(e) from None
        link = urlsplit(c.dashboard_link) if c.dashboard_link else None
        if link is None or not link.port:
            raise web.HTTPError(404, f"cluster {c.name} has no dashboard (bokeh is not installed)")
        return f"{link.scheme}://{link.netloc}"

    def _is_library_or_socket(self, path: str | None) -> bool:
        return (path or "/").startswith(_STATIC) or self.request.headers.get("Upgrade", "").lower() == "websocket"

    async def _audit(self, cluster_id: str, reason: str) -> None:
        trace = RequestTrace.of(self)
        if trace.denied:
            return
        trace.denied = True
        await self.settings["lepton"].record_async(
            getattr(self.current_user, "username", "anonymous"), "read", f"clusters:{cluster_id}/dashboard",
            "deny", reason=reason, request_id=trace.id, method=self.request.method, url=self.request.path)

    def _prefix(self, cluster_id: str) -> str:
        return url_path_join(self.base_url, "lepton", "dashboard", cluster_id)

    def _upstream_path(self, cluster_id: str) -> str:
        """The request's path below the prefix, still percent-encoded, with its query."""
        rest = self.request.path[len(self._prefix(cluster_id)):] or "/"
        return rest + (f"?{self.request.query}" if self.request.query else "")

    # -- HTTP ------------------------------------------------------------------------------

    @web.authenticated
    async def get(self, cluster_id: str, path: str | None = None) -> None:  # type: ignore[override]
        origin = await self._dashboard(cluster_id, path)
        if not path:
            # Without the slash the dashboard's relative links would leave the prefix.
            self.redirect(self._prefix(cluster_id) + "/status")
            return
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            self.origin = origin
            await websocket.WebSocketHandler.get(self, cluster_id, path)
            return
        await self._forward(cluster_id, origin, path)

    @web.authenticated
    async def head(self, cluster_id: str, path: str | None = None) -> None:
        await self._forward(cluster_id, await self._dashboard(cluster_id, path), path or "/")

    async def _forward(self, cluster_id: str, origin: str, path: str) -> None:
        """Stream the dashboard's answer back, headers first, chunk by chunk."""
        key = (origin, self._upstream_path(cluster_id))
        cached = ASSETS.get(key) if self.request.method == "GET" else None
        if cached is not None:
            self._answer_cached(*cached)
            return
        kept: list[bytes] | None = [] if self.request.method == "GET" and path.startswith(_STATIC) else None
        headers = httputil.HTTPHeaders({k: v for k, v in self.request.headers.get_all()
                                        if k.lower() not in _DROP_REQUEST})
        upstream = httputil.HTTPHeaders()
        status: list[Any] = [502, None]
        started = False

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                upstream.clear()  # a new response (after a 100 Continue)
                parts = line.split(" ", 2)
                status[:] = [int(parts[1]), parts[2].strip() if len(parts) > 2 else None]
            elif line.strip():
                upstream.parse_line(line)

        def start() -> None:
            nonlocal started
            started = True
            self.set_status(status[0], status[1])
            self.clear_header("Content-Type")
            for name, value in upstream.get_all():
                if name.lower() in _KEEP_RESPONSE:
                    self.add_header(name, self._local_location(cluster_id, origin, value)
                                    if name.lower() == "location" else value)

        pending = 0

        def on_chunk(chunk: bytes) -> None:
            nonlocal pending
            if not started:
                start()
            self.write(chunk)
            if kept is not None:
                kept.append(chunk)
            pending += len(chunk)
            # A short chunk: the dashboard sends slower than this reads, so nothing waits for more.
            if pending >= FLUSH_BYTES or len(chunk) < _FULL_CHUNK:
                pending = 0
                self.flush()

        request = httpclient.HTTPRequest(
            origin + self._upstream_path(cluster_id), method=self.request.method, headers=headers,
            follow_redirects=False, decompress_response=False, connect_timeout=CONNECT_TIMEOUT, request_timeout=300,
            header_callback=on_header, streaming_callback=on_chunk)
        response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:
            ASSETS.forget(origin)
            if started:  # cut off mid-body: the browser sees a truncated answer
                self.finish()
                return
            raise web.HTTPError(502, f"the dashboard of cluster {cluster_id} does not answer "
                                     f"({response.error.__class__.__name__})")
        if not started:
            start()
        if kept is not None and cacheable(path, status[0], upstream):
            ASSETS.put(key, [(k, v) for k, v in upstream.get_all() if k.lower() in _KEEP_RESPONSE], b"".join(kept))
        self.finish()

    def _answer_cached(self, headers: list[tuple[str, str]], body: bytes) -> None:
        etag = dict((k.lower(), v) for k, v in headers).get("etag")
        if etag and etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        self.clear_header("Content-Type")
        for name, value in headers:
            self.add_header(name, value)
        self.finish(body)

    def _local_location(self, cluster_id: str, origin: str, location: str) -> str:
        """A redirect within the dashboard stays under the prefix."""
        if location.startswith(origin):
            location = location[len(origin):]
        if location.startswith("/"):
            return self._prefix(cluster_id) + location
        return location

    # -- WebSocket -------------------------------------------------------------------------

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        # bokeh sends ["bokeh", <session token>] and answers "bokeh".
        self.subprotocols = list(subprotocols)
        return subprotocols[0] if subprotocols else None

    async def open(self, cluster_id: str, path: str | None = None) -> None:  # type: ignore[override]
        url = "ws" + self.origin[len("http"):] + self._upstream_path(cluster_id)
        request = httpclient.HTTPRequest(url, connect_timeout=CONNECT_TIMEOUT, request_timeout=CONNECT_TIMEOUT)
        try:
            self.upstream = await websocket.websocket_connect(
                request, on_message_callback=self._from_dashboard,
                subprotocols=getattr(self, "subprotocols", None) or None)
        except (OSError, httpclient.HTTPClientError, websocket.WebSocketError) as e:
            self.close(1011, f"the dashboard does not answer ({e.__class__.__name__})")

    def _from_dashboard(self, message: str | bytes | None) -> None:
        if message is None:
            self.close()
            return
        try:
            self.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            pass

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is not None:
            try:
                await self.upstream.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close()

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
