"""Who may use JupyterLab's own server routes (``/lab``, ``/lab/api/...``) on a shared server.

jupyterlab_server and jupyterlab answer these routes without asking the
authorizer; :mod:`lepton_lab.server.lab` makes each of their handlers ask for a
``lab:<resource>`` and :func:`decide_lab` answers:

* the page, translations, listings, themes, licenses, news — read by any signed-in user;
* workspaces — any signed-in user, each in their own: the server's owner keeps
  JupyterLab's workspace directory, everyone else has one of their own, so nobody
  reads or overwrites another's;
* settings and plugins — read by anyone; written (they apply to every user of the
  server) only by the server's owner and the users under ``trusted:``;
* building the lab and installing extensions — run code as the server's account:
  the owner and ``trusted:`` users only;
* anything else — refused.
"""

from __future__ import annotations

from .path_rules import Decision
from .policy import Policy

#: (lab resource, action) -> who: "any" signed-in user, "own" (in their own space), or "server"
#: (the server's owner and trusted users).
LAB_RULES: dict[tuple[str, str], str] = {
    ("lab:page", "read"): "any",
    ("lab:translations", "read"): "any",
    ("lab:listings", "read"): "any",
    ("lab:themes", "read"): "any",
    ("lab:licenses", "read"): "any",
    ("lab:news", "read"): "any",
    ("lab:workspaces", "read"): "own",
    ("lab:workspaces", "write"): "own",
    ("lab:settings", "read"): "any",
    ("lab:settings", "write"): "server",
    ("lab:plugins", "read"): "any",
    ("lab:plugins", "write"): "server",
    ("lab:build", "read"): "any",
    ("lab:build", "write"): "server",
    ("lab:extensions", "read"): "any",
    ("lab:extensions", "write"): "server",
}

_WHAT = {"lab:settings": "change JupyterLab's settings", "lab:plugins": "enable or disable JupyterLab plugins",
         "lab:build": "build JupyterLab", "lab:extensions": "install or change JupyterLab extensions"}


def decide_lab(policy: Policy, user: str, action: str, resource: str, server_owner: str | None) -> Decision:
    """May ``user`` do ``action`` on JupyterLab's ``resource``? With a one-line reason."""
    who = LAB_RULES.get((resource, action))
    if who == "any":
        return Decision(True, "any signed-in user", audit=False)
    if who == "own":
        return Decision(True, f"{user}'s own JupyterLab workspaces", audit=False)
    if who == "server":
        if user == server_owner or policy.trusts(user):
            return Decision(True, f"{user} may {_WHAT[resource]} ({'owner' if user == server_owner else 'trusted'})")
        return Decision(False, f"{user} may not {_WHAT[resource]} on this shared server: it applies to every "
                               f"user here; the server's owner or a user under 'trusted:' in {policy.source} does")
    return Decision(False, f"{action} on {resource!r} is no JupyterLab request this server's policy knows; refused")


__all__ = ["LAB_RULES", "decide_lab"]
