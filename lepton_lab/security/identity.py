"""Who is calling: a jupyter_server ``IdentityProvider`` whose users carry teams and roles.

Three ways in, each mapped through the policy:

* the server's own token (or its login cookie) is the **local user**, the one
  running the server;
* a **personal token** (``lpt_…``, issued by ``lepton-lab token add USER``) is
  that user; only its Scrypt hash is stored;
* a **JupyterHub** identity (user name and groups from the Hub) is that user,
  with the policy's group rules applied.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.auth.identity import PasswordIdentityProvider, User
from traitlets import Any as TraitAny

from .policy import Policy


@functools.lru_cache(maxsize=1)
def local_user() -> str:
    """The account running the server: the embedded default's admin."""
    try:
        return getpass.getuser()
    except Exception:
        return "lepton"


def server_owner() -> str:
    """Whose server this is: the JupyterHub user it was spawned for, else the account running it.

    Only the owner (and users the policy names under ``trusted:``) run code here.
    """
    return os.environ.get("JUPYTERHUB_USER") or local_user()


@dataclass
class LeptonUser(User):
    """A Jupyter user with the teams, roles and groups the policy gives them."""

    teams: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    via: str = ""


def make_user(policy: Policy, username: str, groups: list[str] | tuple[str, ...] = (), via: str = "") -> LeptonUser:
    """A LeptonUser for ``username``, roles looked up in ``policy`` now (so edits apply at once)."""
    groups = list(groups)
    roles = policy.roles_of(username, groups)
    return LeptonUser(username=username, teams=list(roles), roles=roles, groups=groups, via=via)


def from_hub_model(policy: Policy, model: dict[str, Any]) -> LeptonUser:
    """Map a JupyterHub user model (``{"name": ..., "groups": [...]}``) through the policy."""
    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("a JupyterHub user model has a non-empty 'name'")
    groups = model.get("groups") or []
    return make_user(policy, name, [str(g) for g in groups], via="jupyterhub")


class LeptonIdentityProvider(PasswordIdentityProvider):
    """jupyter_server's token/password identity, with Lepton's users, teams and tokens on top."""

    services = TraitAny(None, allow_none=True,
                        help="The services whose policy gives users their teams and whose token store "
                             "knows personal tokens; set by the server extension when it loads")
    kernel_tokens = TraitAny(None, allow_none=True,
                             help="Tokens of the kernels started for users other than the server's owner")

    def _policy(self) -> Policy | None:
        return self.services.policy if self.services is not None else None

    async def get_user_token(self, handler) -> User | None:  # type: ignore[override]
        token = self.get_token(handler) or ""
        services = self.services
        kernel_tokens = self.kernel_tokens
        if services is not None and kernel_tokens is not None and token.startswith(kernel_tokens.PREFIX):
            name = kernel_tokens.user_of(token)
            return make_user(services.policy, name, via="kernel-token") if name else None
        if services is not None and token.startswith("lpt_"):
            import asyncio

            # Scrypt takes tens of milliseconds on a cache miss: keep it off the event loop.
            name = services.tokens.cached(token) or await asyncio.to_thread(services.tokens.verify, token)
            if name is None:
                return None
            return make_user(services.policy, name, via="personal-token")
        user = await super().get_user_token(handler)
        if user is not None and not isinstance(user, LeptonUser):
            # The server's own token identifies the person who started the server.
            policy = self._policy()
            if policy is not None:
                return make_user(policy, local_user(), via="server-token")
        return user

    def user_to_cookie(self, user: User) -> str:
        groups = getattr(user, "groups", [])
        return json.dumps({"username": user.username, "groups": groups, "via": getattr(user, "via", "")})

    def user_from_cookie(self, cookie_value: str) -> User | None:
        data = json.loads(cookie_value)
        name = data.get("username")
        if not name:
            return None
        policy = self._policy()
        if policy is None:
            return User(name)
        return make_user(policy, name, data.get("groups") or [], via=data.get("via") or "cookie")

    def generate_anonymous_user(self, handler) -> User:
        # With authentication switched off, the only person who can reach the server is its owner.
        policy = self._policy()
        if policy is None:
            return super().generate_anonymous_user(handler)
        return make_user(policy, local_user(), via="no-auth")

