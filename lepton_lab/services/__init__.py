"""The services behind every front door, for a known user.

``Services`` holds the policy, the audit log, personal tokens and the cluster
manager, and answers the questions that need both a user and a resource: may
this user create a cluster in this team, within quota? Which clusters may they
see? The REST handlers and the kernel's embedded transport both call these
methods; neither holds a rule of its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketHandler

from .. import config
from ..cluster import accounts
from ..cluster.idle import IdleClock
from ..cluster.launcher import ClusterManager
from ..security.audit import AuditLog
from ..security.policy import Policy
from ..security.spend import SpendMeter
from ..security.tokens import TokenStore
from .audit import AuditBatcher, Ticket, hold_answer
from .base import Actor
from .clusters import SERVER_STOPPED, ClusterServices, default_cluster_name, issue_join_token
from .deployments import DeploymentServices
from .models import ModelServices
from .policy_reload import Reload, reload_policy, stamp
from .predictions import Predictions
from .templates import TemplateServices
from .watch import team_spend


class Services(DeploymentServices, ClusterServices, ModelServices, TemplateServices):
    """Policy-aware services shared by the server extension's handlers."""

    def __init__(self, policy: Policy, *, home: Path | None = None, audit: AuditLog | None = None,
                 tokens: TokenStore | None = None, manager: ClusterManager | None = None,
                 templates_dir: Path | None = None, tls: bool = True, run_as_owner: bool = False,
                 out_of_process: bool = False, policy_path: Path | None = None, keep_records: bool = True):
        self.policy = policy
        # The file the policy came from: read again when it changes (services.policy_reload).
        self.policy_path = Path(policy_path) if policy_path is not None else None
        self.policy_stamp = stamp(self.policy_path) if self.policy_path is not None else None
        #: cluster id -> user -> the groups they held when last issued a client certificate of it
        self.cert_groups: dict[str, dict[str, tuple[str, ...]]] = {}
        # The team deployment: each cluster's processes run under its owner's OS account.
        self.run_as_owner = run_as_owner
        # Each cluster's scheduler and local workers are processes apart from this one (implied by
        # run_as_owner): a busy scheduler never holds up the server's event loop.
        self.out_of_process = out_of_process or run_as_owner
        # The next cluster's scheduler, started ahead (see close_spare).
        self._spare = accounts.this_account() if out_of_process and not run_as_owner else None
        if self._spare is not None:
            accounts.SPARES.keep(self._spare)
        self.home = Path(home or config.home())
        self.audit = audit or AuditLog(config.audit_path())
        self.tokens = tokens or TokenStore(config.tokens_path())
        self.manager = manager or ClusterManager()
        self.templates_dir = Path(templates_dir or config.templates_path())
        self.tls = tls
        self.lock = threading.RLock()
        self._audit_batcher = AuditBatcher(self.audit)
        # Cluster records and spend outlive the server in its home; a kernel's own services
        # (``keep_records=False``) keep them in memory, as its clusters end with it.
        self.records_path = self.home / "clusters.json" if keep_records else None
        self.records: dict[str, dict[str, Any]] = self._load_records()
        # Spend metered while clusters run, idle ones stopped: see services.watch.
        self.spend = SpendMeter(self.home / "spend.json" if keep_records else None)
        self.idle = IdleClock()
        self.watch: Any = None
        #: Where the server proxies dashboards (``<base_url>lepton/dashboard/``); empty: links as they listen.
        self.dashboard_prefix = ""
        #: Predictions waiting on a deployment's site, stoppable by the job id their caller gave.
        self.predicting = Predictions()

    async def record_async(self, user: str, action: str, resource: str, outcome: str, *,
                           reason: str = "", request_id: str | None = None, **detail: Any) -> Any:
        """Append an audit line off the event loop; concurrent decisions share one fsync.

        The request waits until its line is on disk (group commit): nothing is
        answered before it is recorded.
        """
        return await self.audit_later(user, action, resource, outcome, reason=reason, request_id=request_id,
                                      **detail)

    def audit_later(self, user: str, action: str, resource: str, outcome: str, *, reason: str = "",
                    request_id: str | None = None, **detail: Any) -> Ticket:
        """Queue an audit line for the next group commit; ``await`` the ticket for its durable entry."""
        return self._audit_batcher.submit(dict(user=user, action=action, resource=resource, outcome=outcome,
                                               reason=reason, request_id=request_id, detail=detail))

    def close(self) -> None:
        """Stop the clusters (see ``ClusterServices.close``), then the audit writer and the process kept ready."""
        super().close()
        self.close_audit()
        self.close_spare()

    def close_spare(self) -> None:
        """Stop keeping a process started ahead for the next cluster (idempotent)."""
        account, self._spare = self._spare, None
        if account is not None:
            accounts.SPARES.release(account)

    def close_audit(self) -> None:
        """Write the audit lines still pending and stop the audit writer; later decisions are refused."""
        self._audit_batcher.close()

    async def record_before_answer(self, handler: Any, user: str, action: str, resource: str, outcome: str, *,
                                   reason: str = "", request_id: str | None = None, **detail: Any) -> None:
        """Audit a decision on ``handler``'s request: its answer leaves only once the line is on disk.

        The request goes on at once while its batch is written: its connection holds what
        the handler (or, for a refusal, tornado's error page) writes until then. A WebSocket
        handshake, which hands its connection over, and a request without one wait here.
        """
        ticket = self.audit_later(user, action, resource, outcome, reason=reason, request_id=request_id, **detail)
        handler.lepton_audit = ticket
        if not isinstance(handler, WebSocketHandler) and hold_answer(handler, ticket):
            return
        await ticket

    def reload_policy(self, who: Actor) -> Reload:
        """Read the policy file again (``policy:admin``); a bad file is refused and the policy in force stays."""
        self.require(who, "policy:admin", resource="policy:reload")
        return reload_policy(self, by=who.name)

    def whoami(self, who: Actor) -> dict[str, Any]:
        # Quota and Usage hold numbers only: vars() copies them without asdict's deep copies,
        # a fifth of this route's CPU.
        roles = self.policy.roles_of(who.name, who.groups)
        quotas = {}
        for team in roles:
            q = self.policy.quota_for(team=team)
            quotas[team] = {**vars(q), "used": vars(self.usage(team=team))}
        uq = self.policy.quota_for(user=who.name)
        return {
            "name": who.name, "display_name": who.name, "teams": list(roles), "roles": roles,
            "groups": list(who.groups),
            "permissions": sorted(self.policy.permissions(who.name, who.groups)),
            "quotas": quotas,
            "user_quota": {**vars(uq), "used": vars(self.usage(user=who.name))},
            "spend": {team: team_spend(self, team) for team in roles},
        }


__all__ = ["SERVER_STOPPED", "Actor", "Services", "default_cluster_name", "issue_join_token"]
