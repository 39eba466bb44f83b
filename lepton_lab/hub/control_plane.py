"""The Lepton control plane: the team deployment's JupyterHub service.

Run by the Hub as a managed service under its own OS account::

    c.JupyterHub.services = [{
        "name": "lepton",
        "url": "http://127.0.0.1:8090",
        "command": ["/opt/lepton/venv/bin/python", "-m", "lepton_lab.hub.control_plane"],
        "user": "lepton",
        "environment": {"LEPTON_HOME": "/var/lib/lepton"},
    }]

It alone holds the policy, the audit log, the registry and the team keys, the
clusters' CAs and the cluster manager, in ``$LEPTON_HOME`` (made and kept 0700;
it refuses to start on a state directory other accounts can read). It serves the
same REST API as the personal deployment's server extension, under the service's
prefix (``/services/lepton/lepton/api/...``), and nothing else: no kernels, no
terminals, no files. Every caller is authenticated by its own Hub token
(:class:`~lepton_lab.hub.identity.HubIdentityProvider`); every cluster it starts
runs under its owner's OS account (:mod:`lepton_lab.cluster.accounts`).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from urllib.parse import urlsplit

from jupyter_server.serverapp import ServerApp

from .. import config
from ..errors import ConfigError


class ControlPlaneApp(ServerApp):
    """A Jupyter server that loads the Lepton extension and no other."""

    name = "lepton-control-plane"
    description = "The Lepton Lab control plane (a JupyterHub service)"

    def find_server_extensions(self) -> None:
        self.jpserver_extensions = {"lepton_lab": True}


def check_state_dir(home: Path) -> None:
    """Make ``home`` if needed; refuse one owned by another account or open to others."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = home.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(f"the control plane's state directory {home} belongs to uid {info.st_uid}, "
                          f"not to this account (uid {os.getuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(home, 0o700)


def argv_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """ServerApp options from the environment the Hub gives a managed service."""
    env = dict(os.environ if environ is None else environ)
    url = env.get("JUPYTERHUB_SERVICE_URL")
    if not url or not env.get("JUPYTERHUB_API_TOKEN"):
        raise ConfigError("the control plane runs as a JupyterHub service: JUPYTERHUB_SERVICE_URL and "
                          "JUPYTERHUB_API_TOKEN are not set")
    where = urlsplit(url)
    if not where.hostname or not where.port:
        raise ConfigError(f"JUPYTERHUB_SERVICE_URL needs a host and a port, got {url!r}")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/lepton/"
    home = config.home()
    empty = home / "root"
    empty.mkdir(mode=0o700, exist_ok=True)
    argv = [
        f"--ServerApp.ip={where.hostname}", f"--ServerApp.port={where.port}", "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={prefix}", "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={empty}", "--ServerApp.terminals_enabled=False",
        "--ServerApp.identity_provider_class=lepton_lab.hub.identity.HubIdentityProvider",
        "--ServerApp.authorizer_class=lepton_lab.security.authz.LeptonAuthorizer",
        "--ServerApp.disable_check_xsrf=True",  # token-authenticated API calls only, never cookies
    ]
    if os.getuid() == 0:
        argv.append("--ServerApp.allow_root=True")
    return argv


def main(argv: list[str] | None = None) -> None:
    os.environ["LEPTON_ROLE"] = "control-plane"
    home = config.home()
    try:
        check_state_dir(home)
        options = argv_from_env()
    except ConfigError as e:
        raise SystemExit(f"Lepton control plane: {e}") from None
    # Jupyter's runtime files (with the server's own token) stay in the private state directory.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
    ControlPlaneApp.launch_instance(argv=[*options, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
