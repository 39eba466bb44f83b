"""The server extension as a jupyter_server ``ExtensionApp``: its settings are traitlets.

Every setting is read, in this order, from a ``jupyter_server_config`` file (or the command
line, ``--LeptonApp.home=...``), from its environment variable, from the built-in default::

    c.LeptonApp.policy_path = "/srv/lepton/policy.yaml"
    c.LeptonApp.autostart_profile = "local"

What a configuration file sets is put in force for the whole process
(:func:`lepton_lab.config.configure`), so every module reading ``config.home()`` and the
like sees the same value as the extension.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from traitlets import Bool, Enum, Float, Unicode, default

from .. import config
from ..errors import ConfigError
from ..security.authz import KernelOwners
from ..security.identity import local_user, server_owner
from ..services import Actor
from .extension import freeze_startup_objects, open_services, trace_audit
from .kernels import watch_kernels
from .lab import guard_lab_handlers
from .routes import setup_route_handlers

#: Each configurable trait and the environment variable it stands for.
ENVIRONMENT = {
    "home": "LEPTON_HOME",
    "policy_path": "LEPTON_POLICY",
    "autostart_profile": "LEPTON_AUTOSTART",
    "watch_interval": "LEPTON_WATCH_INTERVAL",
    "gc_freeze": "LEPTON_GC_FREEZE",
    "scheduler_host": "LEPTON_SCHEDULER_HOST",
    "scheduler_advertise": "LEPTON_SCHEDULER_ADVERTISE",
    "schedulers": "LEPTON_SCHEDULERS",
}


class LeptonApp(ExtensionApp):
    """Lepton Lab's REST API, policy, audit log and clusters inside a Jupyter server."""

    name = "lepton_lab"
    description = "Lepton Lab: policy-checked Dask clusters and a signed model registry"
    load_other_extensions = True

    home = Unicode(help="Directory of the policy, audit log, keys and model registry "
                        "(env LEPTON_HOME; default ~/.lepton).").tag(config=True)
    policy_path = Unicode(help="The access policy (YAML); a missing file becomes the embedded default, "
                               "where the local user administers every team "
                               "(env LEPTON_POLICY; default <home>/policy.yaml).").tag(config=True)
    autostart_profile = Unicode(help="Cluster profile started for the local user when the server starts; "
                                     "empty starts none (env LEPTON_AUTOSTART).").tag(config=True)
    watch_interval = Float(help="Seconds between the passes that meter spend, stop idle clusters and read "
                                "an edited policy again, from 0 to 3600 "
                                "(env LEPTON_WATCH_INTERVAL; default 30).").tag(config=True)
    gc_freeze = Bool(help="Freeze the objects alive after start-up out of the garbage collector's sight "
                          "(env LEPTON_GC_FREEZE=0 turns it off; default on).").tag(config=True)
    scheduler_host = Unicode(help="Address the schedulers the server starts listen on, no port "
                                  "(env LEPTON_SCHEDULER_HOST; default 127.0.0.1).").tag(config=True)
    scheduler_advertise = Unicode(help="Host or host:port workers and clients are told to reach the schedulers "
                                       "at; empty means the listen address "
                                       "(env LEPTON_SCHEDULER_ADVERTISE).").tag(config=True)

    schedulers = Enum(["in-process", "process"], help="Where the clusters' schedulers and local workers run: "
                      "process (processes of their own, one kept started ahead, so a busy or failing "
                      "scheduler never slows or stops the server) or in-process (in this server's event "
                      "loop, as LocalCluster does) (env LEPTON_SCHEDULERS; default process).").tag(config=True)

    # Unconfigured, each trait reads what is in force without a configuration: the
    # environment variable or the built-in default, as lepton_lab.config states them.
    @default("schedulers")
    def _default_schedulers(self) -> str:
        return "in-process" if config.schedulers_in_process() else "process"

    @default("home")
    def _default_home(self) -> str:
        return str(config.home())

    @default("policy_path")
    def _default_policy_path(self) -> str:
        return str(config.policy_path())

    @default("autostart_profile")
    def _default_autostart_profile(self) -> str:
        return config.autostart_profile()

    @default("watch_interval")
    def _default_watch_interval(self) -> float:
        return config.watch_interval()

    @default("gc_freeze")
    def _default_gc_freeze(self) -> bool:
        return config.gc_freeze()

    @default("scheduler_host")
    def _default_scheduler_host(self) -> str:
        return config.scheduler_host()

    @default("scheduler_advertise")
    def _default_scheduler_advertise(self) -> str:
        return config.scheduler_advertise()

    #: The services this server holds (None in a client of the control plane), and its part.
    services: Any = None
    role = "personal"

    @property
    def server(self) -> ServerApp:
        """The Jupyter server this extension is linked to."""
        assert self.serverapp is not None, "linked before it loads"
        return self.serverapp

    def _link_jupyter_server_extension(self, serverapp) -> None:
        """Link, and select Lepton's identity provider and authorizer before the server creates its own.

        A deployment that configured classes of its own (not jupyter_server's defaults) keeps them.
        """
        super()._link_jupyter_server_extension(serverapp)
        from jupyter_server.auth.authorizer import AllowAllAuthorizer, Authorizer
        from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

        from ..security.authz import LeptonAuthorizer
        from ..security.identity import LeptonIdentityProvider

        if serverapp.authorizer_class in (Authorizer, AllowAllAuthorizer):
            serverapp.authorizer_class = LeptonAuthorizer
        if serverapp.identity_provider_class in (IdentityProvider, PasswordIdentityProvider):
            serverapp.identity_provider_class = LeptonIdentityProvider

    def configured(self) -> dict[str, str]:
        """The settings a configuration file or the command line set, by environment variable name."""
        names: set[str] = set()
        for cls in type(self).__mro__:
            if cls.__name__ in self.config:
                names |= set(self.config[cls.__name__]) & set(ENVIRONMENT)
        values = {}
        for name in names:
            value = getattr(self, name)
            if name == "gc_freeze":
                value = "1" if value else "0"
            elif name == "home":
                value = str(Path(value).expanduser())
            values[ENVIRONMENT[name]] = str(value)
        return values

    def _check(self, values: dict[str, str]) -> None:
        """Refuse, in one line naming the trait, a configured value out of bounds."""
        if "LEPTON_WATCH_INTERVAL" in values and not 0 < self.watch_interval <= 3600:
            raise ConfigError(f"LeptonApp.watch_interval: seconds from 0 to 3600, got {self.watch_interval!r}")
        if "LEPTON_SCHEDULER_HOST" in values:
            config._address(self.scheduler_host, "LeptonApp.scheduler_host", False)
        if values.get("LEPTON_SCHEDULER_ADVERTISE", "").strip():
            config._address(self.scheduler_advertise, "LeptonApp.scheduler_advertise", True)

    def initialize_settings(self) -> None:
        log = self.server.log
        values = self.configured()
        try:
            self._check(values)
        except ConfigError as e:
            log.critical(f"Lepton Lab: {e}")
            raise SystemExit(f"Lepton Lab: server not started: {e}") from None
        config.configure(values)
        self.role = config.deployment()
        if self.role == "client":
            return
        self.services = open_services(log, config.policy_path(), self.role)
        self.settings["lepton"] = self.services
        # The authorizer and identity provider are handed the services, never look them up.
        for part in (self.server.authorizer, self.server.identity_provider):
            if part.has_trait("services"):
                part.set_trait("services", self.services)
        if self.server.authorizer.has_trait("control_plane"):
            self.server.authorizer.set_trait("control_plane", self.role == "control-plane")

    def initialize_handlers(self) -> None:
        server_app, log = self.server, self.server.log
        web_app = server_app.web_app
        if self.role == "client":
            # A user's own server in the team deployment: the control plane holds every service.
            from ..hub.forward import setup_forwarding

            setup_forwarding(web_app, config.control_plane_url())
            log.info(f"Lepton Lab: client of the control plane at {config.control_plane_url()}")
            return
        services = self.services
        setup_route_handlers(web_app)
        # JupyterLab's own routes (workspaces, settings, ...) ask the authorizer too.
        guard_lab_handlers(web_app)
        if self.role == "personal":
            owners = KernelOwners(server_owner())
            web_app.settings["lepton_kernel_owners"] = owners
            watch_kernels(server_app, owners)
            identity = server_app.identity_provider
            if identity.has_trait("kernel_tokens"):
                identity.set_trait("kernel_tokens", web_app.settings.get("lepton_kernel_tokens"))
        trace_audit(services)
        atexit.register(services.close)
        if not self._uses_lepton_auth():
            log.warning("Lepton Lab: ServerApp.authorizer_class is not LeptonAuthorizer; "
                        "Jupyter's own resources are not checked against the policy")
        profile = config.autostart_profile()
        if profile and self.role == "personal":
            self._autostart(profile)
        if config.gc_freeze():
            from tornado.ioloop import IOLoop

            # Runs once the loop starts, after every extension has loaded.
            IOLoop.current().add_callback(
                lambda: log.info(f"Lepton Lab: {freeze_startup_objects()} start-up objects "
                                 "frozen out of the garbage collector"))
        log.info(f"Lepton Lab: policy {services.policy_path} ({len(services.policy.teams)} teams)")

    def _autostart(self, profile: str) -> None:
        services, log = self.services, self.server.log

        def start() -> None:
            try:
                c = services.create_cluster(Actor(local_user()), team=services.policy.teams[0],
                                            profile=profile, name="local")
                log.info(f"Lepton Lab: cluster {c.name} at {c.address}")
            except Exception as e:  # the lab still starts; the sidebar shows no cluster
                log.error(f"Lepton Lab: could not start the {profile} cluster: {e}")

        threading.Thread(target=start, name="lepton-autostart", daemon=True).start()

    def _uses_lepton_auth(self) -> bool:
        from ..security.authz import LeptonAuthorizer

        return isinstance(getattr(self.server, "authorizer", None), LeptonAuthorizer)

    async def stop_extension(self) -> None:
        # The next server in this process (tests start many) reads its own configuration.
        config.configure({})
        # No decision comes after the server: what is pending is written and the audit writer ends;
        # no cluster comes either, so no process is kept started ahead for one.
        services = getattr(self, "services", None)
        if services is not None:
            services.close_audit()
            services.close_spare()
