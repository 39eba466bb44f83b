"""The words a policy speaks: permissions, the built-in roles and their ranks."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from lepton_lab.schemas import suggest

#: Every permission a role can carry.
PERMISSIONS: tuple[str, ...] = (
    "clusters:create",
    "clusters:use",
    "clusters:scale",
    "clusters:delete",
    "clusters:read",
    "models:read",
    "models:publish",
    "models:delete",
    "templates:read",
    "audit:read",
    "terminals:use",
    "policy:admin",
)

_ANALYST = frozenset(
    {
        "clusters:create",
        "clusters:use",
        "clusters:scale",
        "clusters:delete",
        "clusters:read",
        "models:read",
        "models:publish",
        "templates:read",
    }
)

#: Roles that exist even when the file declares none.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "admin": frozenset(PERMISSIONS),
        "lead": frozenset(PERMISSIONS) - {"audit:read", "policy:admin"},
        "analyst": _ANALYST,
        "viewer": frozenset({"clusters:read", "models:read", "templates:read"}),
    }
)

#: Display order of the built-in roles; roles a file adds rank 0.
ROLE_RANKS: Mapping[str, int] = MappingProxyType({"admin": 40, "lead": 30, "analyst": 20, "viewer": 10})

#: Team key in ``members`` / ``groups`` that stands for every team.
ALL_TEAMS = "*"


def role_rank(role: str) -> int:
    """Rank of a role for display and ownership: admin 40 > lead 30 > analyst 20 > viewer 10, others 0."""
    return ROLE_RANKS.get(role, 0)


__all__ = ["ALL_TEAMS", "BUILTIN_ROLES", "PERMISSIONS", "ROLE_RANKS", "role_rank", "suggest"]
