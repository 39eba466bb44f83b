"""What every Lepton handler shares: JSON bodies with limits, typed errors as status codes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ..errors import LeptonError
from ..schemas import object_schema, problem
from ..security.authz import RequestTrace
from ..services import Actor, Services

#: Largest JSON body a Lepton route accepts, unless the route says otherwise (``max_body``).
MAX_BODY = 64 * 1024
#: Largest body of a prediction request: rows to score are bigger than any other request.
PREDICT_MAX_BODY = 16 * 1024 * 1024

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def fields_schema(allowed: Mapping[str, type | tuple[type, ...]], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A body schema from field -> Python type(s); null stands for a field left out."""
    properties = {}
    for key, types in allowed.items():
        names = [_JSON_TYPES[t] for t in (types if isinstance(types, tuple) else (types,))]
        if "number" in names and "integer" in names:
            names.remove("integer")
        properties[key] = {"type": [*names, "null"], "x-reason": "wrong type: must be {expected}, got {kind}"}
    return object_schema(properties, required)


def http_error(e: LeptonError) -> web.HTTPError:
    """The HTTP error a LeptonError crosses REST as: its status, its line, and its kind for clients."""
    err = web.HTTPError(e.status, str(e).replace("%", "%%"))
    err.lepton_kind = type(e).__name__  # type: ignore[attr-defined]
    return err


def json_error(handler: Any, status_code: int, **kwargs: Any) -> None:
    """Answer an error as ``{"message": <one line>, "reason": ..., "kind": <LeptonError subclass>?}``."""
    exc = kwargs.get("exc_info", (None, None, None))[1]
    message = ""
    if isinstance(exc, web.HTTPError) and exc.log_message:
        message = exc.log_message % exc.args if exc.args else exc.log_message
    denial = getattr(handler, "lepton_denial", None)
    if status_code == 403 and denial:
        message = denial
    if not message:
        message = {401: "sign in first (a token or the login page)", 403: "not allowed",
                   404: "not found"}.get(status_code, "request failed")
    handler.set_header("Content-Type", "application/json")
    body = {"message": " ".join(str(message).split()), "reason": handler._reason}
    if getattr(exc, "lepton_kind", None):
        body["kind"] = exc.lepton_kind
    handler.finish(json.dumps(body))


class LeptonHandler(APIHandler):
    """Base of Lepton's REST handlers: ``self.services``, ``self.actor``, one-line JSON errors."""

    #: Largest JSON body this route accepts.
    max_body = MAX_BODY

    @property
    def services(self) -> Services:
        return self.settings["lepton"]

    @property
    def actor(self) -> Actor:
        return Actor.of(self.current_user)

    def body(self, allowed: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()) -> dict[str, Any]:
        """The JSON object body with only ``allowed`` fields of their types and the ``required`` ones (400 else)."""
        return self.json_body(fields_schema(allowed, required))

    def json_body(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON object body, checked against ``schema``: its first problem is a one-line 400."""
        raw = self.request.body or b""
        if len(raw) > self.max_body:
            raise web.HTTPError(400, f"request body over {self.max_body // 1024} KiB")
        try:
            data = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise web.HTTPError(400, f"body is not valid JSON ({e.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        found = problem(data, schema)
        if found is not None:
            path, reason = found
            raise web.HTTPError(400, (f"{path}: {reason}" if path else reason).replace("%", "%%"))
        return data

    def check_xsrf_cookie(self) -> None:
        # Without any identity the answer is 401, not an XSRF complaint.
        if hasattr(self, "_jupyter_current_user") and self._jupyter_current_user is None:
            raise web.HTTPError(401, "sign in first: a token in the Authorization header or a login cookie")
        return super().check_xsrf_cookie()

    def get_login_url(self) -> str:
        # An API has no login page to redirect to: no identity is a 401.
        raise web.HTTPError(401, "sign in first: a token in the Authorization header or a login cookie")

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        json_error(self, status_code, **kwargs)

    async def prepare(self, *args: Any, **kwargs: Any) -> Any:
        RequestTrace.of(self)
        return await super().prepare(*args, **kwargs)

    async def run(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Call a service off the event loop; a LeptonError becomes its HTTP status.

        A refusal (403, 404) no layer has audited yet is audited here, with the request id.
        """
        import asyncio
        import contextvars

        context = contextvars.copy_context()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, lambda: context.run(fn, *args, **kwargs))
        except LeptonError as e:
            if e.status in (403, 404):
                await self.audit_denial(str(e))
            raise http_error(e) from None

    async def audit_denial(self, reason: str) -> None:
        """One audit line for a refusal of this request, unless one is already written."""
        trace = RequestTrace.of(self)
        if trace.denied:
            return
        trace.denied = True
        user = self.current_user
        base = url_path_join(self.base_url, "lepton", "api")
        where = self.request.path[len(base):].strip("/") if self.request.path.startswith(base) else ""
        kind, _, rest = where.partition("/")
        await self.services.record_async(getattr(user, "username", "anonymous"),
                                         "read" if self.request.method in ("GET", "HEAD") else "write",
                                         f"{kind or 'lepton'}:{rest}", "deny",
                                         reason=reason, request_id=trace.id, method=self.request.method,
                                         url=self.request.path)


class NotFoundHandler(LeptonHandler):
    """Any path under ``/lepton/api/`` that names no route: a JSON 404, whoever asks."""

    def check_xsrf_cookie(self) -> None:
        return None

    @allow_unauthenticated
    def get(self, *args: Any) -> None:
        raise web.HTTPError(404, f"no Lepton API route {self.request.path!r}; see GET /lepton/api/whoami")

    post = put = patch = delete = head = options = get
