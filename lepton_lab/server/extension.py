"""The server extension: load the policy (refusing to start on a bad one), wire services and routes.

Once running, the policy file is read again whenever it changes (the services' watch) or an
admin asks (``POST /lepton/api/admin/policy``); a bad edit is refused and the policy in force stays.
"""

from __future__ import annotations

import atexit
import gc
import threading

from .. import config
from ..errors import ConfigError
from ..security.authz import REQUEST_TRACE, KernelOwners
from ..security.identity import local_user, server_owner, set_current_policy
from ..security.policy import ensure_policy_file, load_policy
from ..services import Actor, Services
from .kernels import watch_kernels
from .lab import guard_lab_handlers
from .routes import setup_route_handlers


def load_server_extension(server_app) -> None:
    role = config.deployment()
    if role == "client":
        # A user's own server in the team deployment: the control plane holds every service.
        from ..hub.forward import setup_forwarding

        setup_forwarding(server_app.web_app, config.control_plane_url())
        server_app.log.info(f"Lepton Lab: client of the control plane at {config.control_plane_url()}")
        return
    path = config.policy_path()
    try:
        if path.exists():
            policy = load_policy(path)
        else:
            # The embedded default: the local user administers every team.
            policy = ensure_policy_file(path, local_user())
    except ConfigError as e:
        server_app.log.critical(f"Lepton Lab: {e}")
        # Running with no policy would mean running open: stop instead.
        raise SystemExit(f"Lepton Lab: invalid policy, server not started: {e}") from None
    set_current_policy(policy)
    # In the control plane, every cluster runs under its owner's OS account, never under this one.
    services = Services(policy, run_as_owner=role == "control-plane", policy_path=path)
    try:  # edits to the policy file take effect within one watch period (services.policy_reload)
        services.start_watch()
    except ConfigError as e:
        server_app.log.critical(f"Lepton Lab: {e}")
        raise SystemExit(f"Lepton Lab: server not started: {e}") from None
    web_app = server_app.web_app
    web_app.settings["lepton"] = services
    web_app.settings["lepton_control_plane"] = role == "control-plane"
    setup_route_handlers(web_app)
    # JupyterLab's own routes (workspaces, settings, ...) ask the authorizer too.
    guard_lab_handlers(web_app)
    if role == "personal":
        owners = KernelOwners(server_owner())
        web_app.settings["lepton_kernel_owners"] = owners
        watch_kernels(server_app, owners)
    trace_audit(services)
    atexit.register(services.close)
    if not _uses_lepton_auth(server_app):
        server_app.log.warning("Lepton Lab: ServerApp.authorizer_class is not LeptonAuthorizer; "
                               "Jupyter's own resources are not checked against the policy")
    if config.AUTOSTART_PROFILE and role == "personal":
        def start() -> None:
            try:
                c = services.create_cluster(Actor(local_user()), team=policy.teams[0],
                                            profile=config.AUTOSTART_PROFILE, name="local")
                server_app.log.info(f"Lepton Lab: cluster {c.name} at {c.address}")
            except Exception as e:  # the lab still starts; the sidebar shows no cluster
                server_app.log.error(f"Lepton Lab: could not start the {config.AUTOSTART_PROFILE} cluster: {e}")

        threading.Thread(target=start, name="lepton-autostart", daemon=True).start()
    if config.gc_freeze():
        from tornado.ioloop import IOLoop

        # Runs once the loop starts, after every extension has loaded.
        IOLoop.current().add_callback(
            lambda: server_app.log.info(f"Lepton Lab: {freeze_startup_objects()} start-up objects "
                                        "frozen out of the garbage collector"))
    server_app.log.info(f"Lepton Lab: policy {path} ({len(policy.teams)} teams)")


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


def _uses_lepton_auth(server_app) -> bool:
    from ..security.authz import LeptonAuthorizer

    return isinstance(getattr(server_app, "authorizer", None), LeptonAuthorizer)
