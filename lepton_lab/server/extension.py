"""What the server extension (:class:`~lepton_lab.server.app.LeptonApp`) starts with: the services
over the policy (refusing to start on a bad one), traced audit lines, a frozen start-up heap.

Once running, the policy file is read again whenever it changes (the services' watch) or an
admin asks (``POST /lepton/api/admin/policy``); a bad edit is refused and the policy in force stays.
"""

from __future__ import annotations

import gc
from pathlib import Path

from .. import config
from ..errors import ConfigError
from ..security.authz import REQUEST_TRACE
from ..security.identity import local_user
from ..security.policy import ensure_policy_file, load_policy
from ..services import Services


def open_services(log, path: Path, role: str) -> Services:
    """The services over the policy at ``path``, its watch started; stops the process on a bad one.

    A missing file becomes the embedded default, where the local user administers every team.
    """
    try:
        policy = load_policy(path) if path.exists() else ensure_policy_file(path, local_user())
    except ConfigError as e:
        log.critical(f"Lepton Lab: {e}")
        # Running with no policy would mean running open: stop instead.
        raise SystemExit(f"Lepton Lab: invalid policy, server not started: {e}") from None
    # In the control plane, every cluster runs under its owner's OS account, never under this one;
    # in the personal deployment its scheduler and workers are processes apart from the server's
    # when the schedulers setting says so.
    try:  # edits to the policy file take effect within one watch period (services.policy_reload)
        services = Services(policy, run_as_owner=role == "control-plane",
                            out_of_process=not config.schedulers_in_process(), policy_path=path)
        services.start_watch()
    except ConfigError as e:
        log.critical(f"Lepton Lab: {e}")
        raise SystemExit(f"Lepton Lab: server not started: {e}") from None
    return services


def trace_audit(services: Services) -> None:
    """Audit lines written while serving a request carry its id and mark a denial as recorded."""
    record = services.audit.record

    def traced(user, action, resource, outcome, *, reason="", request_id=None, **detail):
        trace = REQUEST_TRACE.get()
        if trace is not None:
            request_id = request_id or trace.id
            trace.denied = trace.denied or outcome == "deny"
        return record(user, action, resource, outcome, reason=reason, request_id=request_id, **detail)

    services.audit.record = traced  # type: ignore[method-assign]


def freeze_startup_objects() -> int:
    """Collect garbage once, then keep every object alive now out of later collections.

    A running Jupyter server holds hundreds of thousands of long-lived objects
    (modules, classes, Dask, the extensions); each full collection walks them all
    and stops the event loop for 100 ms or more, which users see as the slowest
    requests. Frozen objects are never collected, so this runs once, after start-up.
    Returns how many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

