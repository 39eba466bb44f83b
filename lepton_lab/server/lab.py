"""JupyterLab's own routes under the policy: each of its handlers asks the authorizer first.

jupyterlab_server's and jupyterlab's handlers (workspaces, settings, translations,
listings, themes, licenses, build, extensions, plugins, news, the page) carry only
``@web.authenticated``. :func:`guard_lab_handlers` swaps each for a subclass that
names a ``lab:<resource>`` (:mod:`lepton_lab.security.lab_rules`) and stacks
jupyter_server's ``@authorized`` on every verb, so the ``LeptonAuthorizer`` decides
and audits it. A handler of those packages not named here asks for
``lab:unknown`` and is refused. Workspaces are per user: the server's owner keeps
JupyterLab's workspace directory, every other user gets one of their own below it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.routing import Router

#: ``module:Class`` of a JupyterLab handler -> the resource it asks for.
LAB_HANDLERS = {
    "jupyterlab_server.handlers:LabHandler": "lab:page",
    "jupyterlab_server.handlers:NotFoundHandler": "lab:page",
    "jupyterlab.handlers.error_handler:ErrorHandler": "lab:page",
    "jupyterlab_server.workspaces_handler:WorkspacesHandler": "lab:workspaces",
    "jupyterlab_server.settings_handler:SettingsHandler": "lab:settings",
    "jupyterlab_server.translations_handler:TranslationsHandler": "lab:translations",
    "jupyterlab_server.listings_handler:ListingsHandler": "lab:listings",
    "jupyterlab_server.themes_handler:ThemesHandler": "lab:themes",
    "jupyterlab_server.licenses_handler:LicensesHandler": "lab:licenses",
    "jupyterlab.handlers.build_handler:BuildHandler": "lab:build",
    "jupyterlab.handlers.extension_manager_handler:ExtensionHandler": "lab:extensions",
    "jupyterlab.handlers.plugin_manager_handler:PluginHandler": "lab:plugins",
    "jupyterlab.handlers.announcements:CheckForUpdateHandler": "lab:news",
    "jupyterlab.handlers.announcements:NewsHandler": "lab:news",
}
#: Packages whose handlers are guarded; any other of their handlers is refused.
LAB_PACKAGES = ("jupyterlab_server", "jupyterlab", "notebook_shim")
VERBS = ("get", "head", "post", "put", "patch", "delete")


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _awaited(method: Any) -> Any:
    """``method`` as a coroutine that waits for what it returns (a tornado ``gen.coroutine`` gives a
    Future, which ``@authorized`` would hand back unawaited and the request would finish early)."""

    @functools.wraps(method)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        return (await out) if inspect.isawaitable(out) else out

    return call


def _guarded(cls: type[web.RequestHandler], resource: str) -> type[web.RequestHandler]:
    """``cls`` asking the authorizer for ``resource`` on every verb it implements."""
    base = cls
    if resource == "lab:workspaces":
        base = type(f"Own{cls.__name__}", (_OwnWorkspaces, cls), {"__module__": __name__})
    attrs: dict[str, Any] = {"auth_resource": resource, "lepton_guarded": True, "__module__": __name__}
    for verb in VERBS:
        method = getattr(base, verb)
        if method is not getattr(web.RequestHandler, verb):
            # Signed in first (a page redirects to the login), then the policy.
            attrs[verb] = web.authenticated(authorized(_awaited(method)))
    return type(f"Guarded{cls.__name__}", (base,), attrs)


class _OwnWorkspaces:
    """Each user's workspaces in a directory of their own; the server's owner keeps JupyterLab's."""

    manager: Any
    current_user: Any
    request: Any

    async def prepare(self) -> None:
        await super().prepare()  # type: ignore[misc]
        from ..security.identity import server_owner

        user = self.current_user
        if user is None or user.username == server_owner():
            return
        from jupyterlab_server.workspaces_handler import WorkspacesManager

        name = user.username
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        self.manager = WorkspacesManager(str(Path(self.manager.workspaces_dir) / "users" / safe))

    def put(self, space_name: str = "") -> Any:
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, "a workspace is a JSON object") from None
        if not (isinstance(body, dict) and isinstance(body.get("metadata"), dict)
                and isinstance(body["metadata"].get("id"), str)):
            raise web.HTTPError(400, "a workspace is a JSON object with metadata.id naming it")
        return super().put(space_name)  # type: ignore[misc]


def _rewrite(router: Any, seen: set[int]) -> int:
    """Swap JupyterLab handlers in ``router``'s rules (and nested routers') for guarded ones."""
    if id(router) in seen:
        return 0
    seen.add(id(router))
    swapped = 0
    for rule in getattr(router, "rules", []):
        target = rule.target
        if isinstance(target, Router):
            swapped += _rewrite(target, seen)
        elif (isinstance(target, type) and issubclass(target, web.RequestHandler)
              and not getattr(target, "lepton_guarded", False)
              and target.__module__.split(".")[0] in LAB_PACKAGES):
            rule.target = _guarded(target, LAB_HANDLERS.get(_name(target), "lab:unknown"))
            swapped += 1
    return swapped


def guard_lab_handlers(web_app: Any) -> int:
    """Guard JupyterLab's handlers registered so far and any an extension adds later; returns how many now."""
    seen: set[int] = set()
    swapped = _rewrite(web_app.default_router, seen) + _rewrite(web_app.wildcard_router, seen)
    add = web_app.add_handlers

    def add_handlers(host_pattern: str, host_handlers: Any) -> None:
        add(host_pattern, host_handlers)
        _rewrite(web_app.default_router, set())
        _rewrite(web_app.wildcard_router, set())

    web_app.add_handlers = add_handlers
    return swapped


__all__ = ["LAB_HANDLERS", "guard_lab_handlers"]
