"""A user's own server in the team deployment: the Lepton API, forwarded to the control plane.

The sidebar talks to its own Jupyter server as everywhere else (``<base>/lepton/api/...``).
In a team deployment that server holds no policy, key or cluster: each request
goes on to the control plane with the token the Hub gave this server, which is
its owner's identity. Only the owner's own requests are forwarded; anyone else
the Hub lets reach this server (an admin, a shared-server guest) is refused here
and must use their own server. Answers, errors included, come back unchanged.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlsplit

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, web, websocket

from ..security.identity import server_owner

#: Request headers passed on to the control plane, and answer headers passed back.
REQUEST_HEADERS = ("Content-Type", "X-Lepton-Manifest", "X-Request-Id", "Accept", "If-None-Match",
                   "If-Modified-Since")
ANSWER_HEADERS = ("Content-Type", "X-Lepton-Manifest", "Content-Disposition", "X-Request-Id", "Cache-Control",
                  "ETag", "Last-Modified", "Expires", "Location")
#: Seconds a forwarded request may take (publishing a large model included).
TIMEOUT = 600.0


def _token() -> str:
    return os.environ.get("JUPYTERHUB_API_TOKEN", "")


async def _fetch(control_plane: str, request: httpclient.HTTPRequest) -> httpclient.HTTPResponse:
    """The control plane's answer, whatever its status; one-line 502 when it did not answer at all."""
    try:
        return await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
    except (OSError, httpclient.HTTPClientError) as e:  # refused, unreachable, timed out
        raise web.HTTPError(502, f"the Lepton control plane at {control_plane} did not answer ({e})") from None


def _check_owner(handler: JupyterHandler) -> None:
    user = handler.current_user
    owner = server_owner()
    if user is None:
        raise web.HTTPError(403, "sign in first")
    if user.username != owner:
        raise web.HTTPError(403, f"this is {owner}'s server: {user.username} reaches the Lepton control plane "
                                 "from their own server")


class _Forward(JupyterHandler):
    """Every method of ``/lepton/<area>/<path>``, answered by the control plane."""

    def initialize(self, control_plane: str, area: str = "api") -> None:
        self.control_plane = control_plane
        self.area = area
        # The control plane's dashboard route, and this server's.
        self.theirs = url_path_join(urlsplit(control_plane).path or "/", "lepton", "dashboard") + "/"
        self.mine = url_path_join(self.settings["base_url"], "lepton", "dashboard") + "/"

    def check_xsrf_cookie(self) -> None:
        # The sidebar sends Jupyter's XSRF token; token-authenticated calls need none.
        if self.request.headers.get("Authorization"):
            return None
        return super().check_xsrf_cookie()

    async def _forward(self, path: str) -> None:
        _check_owner(self)
        url = url_path_join(self.control_plane, "lepton", self.area, path)
        if self.request.query:
            url += "?" + self.request.query
        headers = {k: v for k in REQUEST_HEADERS if (v := self.request.headers.get(k))}
        headers["Authorization"] = f"token {_token()}"
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH") else None
        request = httpclient.HTTPRequest(url, method=method, headers=headers, body=body,
                                         allow_nonstandard_methods=True, request_timeout=TIMEOUT,
                                         follow_redirects=False)
        response = await _fetch(self.control_plane, request)
        self.set_status(response.code, response.reason)
        for name in ANSWER_HEADERS:
            if name in response.headers:
                self.set_header(name, self._local(response.headers[name]))
        body = response.body or b""
        if body and response.headers.get("Content-Type", "").startswith("application/json"):
            # Links to the control plane's dashboard routes become this server's own.
            body = self._local(body.decode()).encode()
        if body and method != "HEAD":
            self.write(body)
        await self.finish()

    def _local(self, text: str) -> str:
        return text.replace(self.theirs, self.mine)

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def post(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def patch(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def put(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def delete(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def head(self, path: str) -> None:
        await self._forward(path)


class ForwardHandler(_Forward, APIHandler):
    """The Lepton REST API: JSON answers and one-line JSON errors, as the control plane gives them."""

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        # APIHandler marks every answer JSON; a forwarded one keeps the type it came with.
        kwargs.setdefault("set_content_type", self._headers.get("Content-Type") or "application/json")
        return super().finish(*args, **kwargs)


class TemplateCopy(APIHandler):
    """``POST templates/copy`` lands in this server's own files: the notebook comes from the control plane."""

    def initialize(self, control_plane: str) -> None:
        self.control_plane = control_plane

    @web.authenticated
    async def post(self) -> None:
        import json

        from ..templates import save_copy

        _check_owner(self)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "body is not valid JSON") from None
        team, name = (body.get(k) if isinstance(body, dict) else None for k in ("team", "name"))
        if not isinstance(team, str) or not isinstance(name, str) or not team or not name:
            raise web.HTTPError(400, "give the template's team and name")
        url = url_path_join(self.control_plane, "lepton", "api", "templates", quote(team, safe=""),
                            quote(name, safe=""))
        response = await _fetch(self.control_plane, httpclient.HTTPRequest(
            url, headers={"Authorization": f"token {_token()}"}, request_timeout=TIMEOUT))
        if response.code != 200:
            try:
                message = json.loads(response.body)["message"]
            except (ValueError, KeyError, TypeError):
                message = f"the Lepton control plane answered {response.code}"
            raise web.HTTPError(response.code, message.replace("%", "%%"))
        target = await save_copy(self.contents_manager, self.current_user.username, name,
                                 json.loads(response.body)["content"])
        self.set_status(201)
        self.finish(json.dumps({"path": target}))


class DashboardForward(_Forward):
    """A cluster's dashboard pages and files, as the control plane serves them."""


class ForwardSocket(JupyterHandler, websocket.WebSocketHandler):
    """A WebSocket relayed from the control plane: a cluster's allocation stream, a dashboard's bokeh."""

    def initialize(self, control_plane: str, area: str = "api") -> None:
        self.control_plane = control_plane
        self.area = area
        self.upstream: websocket.WebSocketClientConnection | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "sign in first")
        _check_owner(self)
        await super().get(*args, **kwargs)

    async def open(self, path: str) -> None:  # type: ignore[override]
        base = url_path_join(self.control_plane, "lepton", self.area, path)
        url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        if self.request.query:
            url += "?" + self.request.query
        request = httpclient.HTTPRequest(url, headers={"Authorization": f"token {_token()}"}, request_timeout=30)
        try:
            self.upstream = await websocket.websocket_connect(request, on_message_callback=self._relay)
        except (httpclient.HTTPClientError, OSError) as e:
            self.close(1011, f"the Lepton control plane refused the stream: {e}"[:120])

    def _relay(self, message: str | bytes | None) -> None:
        if message is None:
            self.close()
        else:
            try:
                self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                pass

    def on_message(self, message: str | bytes) -> None:
        if self.upstream is not None:
            self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()


def setup_forwarding(web_app: Any, control_plane: str) -> None:
    """Route ``<base>/lepton/api/...`` of this server to ``control_plane``."""
    api = url_path_join(web_app.settings["base_url"], "lepton", "api")
    dashboard = url_path_join(web_app.settings["base_url"], "lepton", "dashboard")
    options: dict[str, Any] = {"control_plane": control_plane}
    web_app.add_handlers(".*$", [
        (api + r"/(clusters/[^/]+/stream)/?", ForwardSocket, options),
        (api + r"/templates/copy/?", TemplateCopy, options),
        (api + r"/(.*)", ForwardHandler, options),
        # A dashboard's bokeh WebSockets end in /ws; everything else is a page or a file.
        (dashboard + r"/([^/]+/.*/ws)", ForwardSocket, {**options, "area": "dashboard"}),
        (dashboard + r"/(.*)", DashboardForward, {**options, "area": "dashboard"}),
    ])
