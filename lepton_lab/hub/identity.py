"""Who calls the control plane: each caller by its own JupyterHub token, through the policy.

A kernel presents its own ``JUPYTERHUB_API_TOKEN``; a user's server forwards the
sidebar's calls with the token the Hub gave that server. The Hub says whose token it
is and what it may do (``HubAuth``); a token without access to this service, an
unknown token, or no token at all is nobody. Groups come from the Hub's own user
record, read with the service's token, so a team given to a Hub group in the policy
follows membership changes made in the Hub within :data:`GROUP_TTL` seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any as TraitAny

from ..security.identity import make_user

#: Seconds a user's Hub groups are kept before they are read again.
GROUP_TTL = 30.0


class HubIdentityProvider(IdentityProvider):
    """Callers identified by the Hub; the control plane's own token admits no one."""

    services = TraitAny(None, allow_none=True,
                        help="The control plane's services, whose policy gives callers their teams; "
                             "set by the server extension when it loads")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._hub_auth: Any = None
        self._groups: dict[str, tuple[float, list[str]]] = {}

    @property
    def hub_auth(self):
        if self._hub_auth is None:
            from jupyterhub.services.auth import HubAuth

            self._hub_auth = HubAuth()
        return self._hub_auth

    @property
    def auth_enabled(self) -> bool:
        return True

    def should_check_origin(self, handler) -> bool:
        return True

    def get_handlers(self) -> list:
        return []  # no login page: callers bring a Hub token

    async def get_user(self, handler) -> User | None:  # type: ignore[override]
        token = self.hub_auth.get_token(handler, in_cookie=False)
        if not token:
            return None
        model = await self.hub_auth.user_for_token(token, use_cache=True, sync=False)
        if not model or model.get("kind", "user") != "user":
            return None
        if self.hub_auth.access_scopes and not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            handler.log.warning("Lepton control plane: %s's token has no access to this service", model.get("name"))
            return None
        services = self.services
        if services is None:
            return None
        name = str(model["name"])
        groups = await self._groups_of(name, model)
        return make_user(services.policy, name, groups, via="jupyterhub")

    async def _groups_of(self, name: str, model: dict[str, Any]) -> list[str]:
        if isinstance(model.get("groups"), list):
            return [str(g) for g in model["groups"]]
        now = time.monotonic()
        cached = self._groups.get(name)
        if cached is not None and now - cached[0] < GROUP_TTL:
            return cached[1]
        auth = self.hub_auth
        url = f"{auth.api_url.rstrip('/')}/users/{name}"
        try:
            response = await AsyncHTTPClient().fetch(
                url, headers={"Authorization": f"token {auth.api_token}"}, request_timeout=10)
            groups = [str(g) for g in json.loads(response.body).get("groups") or []]
        except (HTTPClientError, OSError, ValueError):
            # Without the Hub's word on groups, only rules naming the user apply.
            groups = []
        self._groups[name] = (now, groups)
        return groups
