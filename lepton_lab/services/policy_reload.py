"""The policy read again while the server runs, and nothing outliving the permission it took away.

:func:`reload_policy` reads the policy file again (the watch does when the file changes, see
:func:`reload_if_changed`; an admin does with ``POST /lepton/api/admin/policy``). A file that
does not validate is refused with its one-line error and the policy in force stays. A valid
one replaces it for every door at once; then every client certificate of a running cluster
whose holder the new policy no longer lets use that cluster (out of the team or the policy, a
role without ``clusters:use`` there, no longer allowed on another's cluster, no longer
trusted to run code as the server) is revoked on that cluster: its gate closes the holder's
connections and refuses the certificate from then on. The reload and each revocation are
audited, with the reason.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cluster.launcher import ManagedCluster
from ..errors import ConfigError
from ..security.policy import Policy, load_policy
from ..security.revocation import CertBook
from .certs import SERVER_NAME, revoke_user

# The services object this works for (``lepton_lab.services.Services``); not imported, as
# the services import this module.
Services = Any

log = logging.getLogger(__name__)

_RELOADING = threading.Lock()


@dataclass
class Reload:
    """What a reload did: the policy now in force, and who lost which cluster, with why."""

    source: str
    teams: list[str]
    #: one entry per (user, cluster): ``{"user", "cluster", "team", "certificates", "reason"}``
    revoked: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "teams": self.teams, "revoked": self.revoked}


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of the file from the next (an editor may replace it, or write it in place)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def lapse_reason(policy: Policy, user: str, groups: tuple[str, ...], c: ManagedCluster) -> str | None:
    """Why ``policy`` no longer lets ``user`` hold a client certificate of ``c``; None while it does.

    The same questions ``Services.credentials`` asks before issuing one.
    """
    from ..security.authz import runs_code_here, untrusted_reason
    from ..security.identity import server_owner

    if not policy.allows(user, groups, "clusters:use", c.team, owner=c.owner):
        return policy.explain(user, groups, "clusters:use", c.team, owner=c.owner)
    if c.run_as is None and not runs_code_here(policy, user, server_owner()):
        return untrusted_reason(policy, user, "hold cluster credentials")
    return None


def holders(services: Services, c: ManagedCluster) -> list[str]:
    """Users holding a live, unrevoked client certificate of ``c``."""
    ca_dir = (services.records.get(c.id) or {}).get("ca_dir")
    if not ca_dir or not Path(ca_dir).exists():
        return []
    book = CertBook(ca_dir)
    revoked = set(book.revoked())
    return sorted({e.name for e in book.issued()
                   if e.role == "client" and e.serial not in revoked and e.name != SERVER_NAME})


def revoke_lapsed(services: Services, policy: Policy, *, by: str) -> list[dict[str, Any]]:
    """Revoke, cluster by cluster, the client certificates ``policy`` no longer permits."""
    out = []
    for c in services.manager.list():
        groups_of = services.cert_groups.get(c.id, {})
        for user in holders(services, c):
            reason = lapse_reason(policy, user, tuple(groups_of.get(user, ())), c)
            if reason is None:
                continue
            why = f"policy reload: {reason}"
            n = revoke_user(services, user, by=by, clusters=[c.id], reason=why).get(c.id, 0)
            out.append({"user": user, "cluster": c.id, "team": c.team, "certificates": n, "reason": why})
    return out


def reload_policy(services: Services, *, by: str) -> Reload:
    """Read the policy file again; the new policy in force and what it revoked.

    A file that does not validate raises its one-line ConfigError (audited) and changes nothing.
    """
    path = services.policy_path
    if path is None:
        raise ConfigError("this server was started with no policy file to read again")
    with _RELOADING:
        seen = stamp(path)
        try:
            policy = load_policy(path)
        except ConfigError as e:
            services.policy_stamp = seen  # the watch says so once per edit, not every pass
            services.audit.record(by, "policy:reload", f"policy:{path}", "deny",
                                  reason=f"refused, the policy in force stays: {e}")
            raise
        with services.lock:
            old, services.policy = services.policy, policy
            services.policy_stamp = seen
        services.audit.record(by, "policy:reload", f"policy:{path}", "allow",
                              teams=list(policy.teams), members=len(policy.members),
                              changed=old != policy)
        revoked = revoke_lapsed(services, policy, by=by)
    return Reload(source=str(path), teams=list(policy.teams), revoked=revoked)


def reload_if_changed(services: Services, *, by: str = SERVER_NAME) -> Reload | None:
    """The watch's check: reload when the file changed since it was last read; None when it did not.

    A refused edit is logged in one line; the policy in force stays until the file is fixed.
    """
    path = services.policy_path
    if path is None or stamp(path) == services.policy_stamp:
        return None
    try:
        return reload_policy(services, by=by)
    except ConfigError as e:
        log.error("Lepton Lab: policy edit refused, the policy in force stays: %s", e)
        return None


__all__ = ["Reload", "holders", "lapse_reason", "reload_if_changed", "reload_policy", "revoke_lapsed", "stamp"]
