"""Who asks, and the state every service shares: the policy's yes or no, audited when it is no."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cluster.idle import IdleClock
from ..cluster.launcher import ClusterManager
from ..errors import PermissionDenied
from ..security.audit import AuditLog
from ..security.policy import Policy
from ..security.spend import SpendMeter
from ..security.tokens import TokenStore
from .predictions import Predictions


@dataclass
class Actor:
    """Who asks: a user name and the groups the policy maps (for rules given to groups)."""

    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def of(cls, user: Any) -> "Actor":
        return cls(user.username, tuple(getattr(user, "groups", ()) or ()))


class ServicesBase:
    """What :class:`~lepton_lab.services.Services` holds, and the permission checks every resource asks."""

    policy: Policy
    policy_path: Path | None
    policy_stamp: tuple[int, int, int] | None
    cert_groups: dict[str, dict[str, tuple[str, ...]]]
    run_as_owner: bool
    out_of_process: bool
    home: Path
    audit: AuditLog
    tokens: TokenStore
    manager: ClusterManager
    templates_dir: Path
    tls: bool
    lock: threading.RLock
    records_path: Path | None
    records: dict[str, dict[str, Any]]
    spend: SpendMeter
    idle: IdleClock
    watch: Any
    dashboard_prefix: str
    predicting: Predictions

    def allowed(self, who: Actor, permission: str, team: str | None = None, owner: str | None = None) -> bool:
        return self.policy.allows(who.name, who.groups, permission, team, owner=owner)

    def require(self, who: Actor, permission: str, team: str | None = None, *, owner: str | None = None,
                resource: str = "") -> None:
        """Raise PermissionDenied (and audit it) unless ``who`` holds ``permission`` in ``team``."""
        if self.allowed(who, permission, team, owner):
            return
        reason = self.policy.explain(who.name, who.groups, permission, team, owner=owner)
        self.audit.record(who.name, permission, resource or f"team:{team}", "deny", reason=reason)
        raise PermissionDenied(reason)
