"""Every default in one place.

Paths come from the environment so that tests, CI and several users on one
machine never share state by accident: ``$LEPTON_HOME`` (default ``~/.lepton``)
holds the policy, user profiles, the audit log, keys and the model registry.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Seconds ``connect`` waits for an unreachable scheduler before giving up.
CONNECT_TIMEOUT = float(os.environ.get("LEPTON_CONNECT_TIMEOUT", "5"))

#: Seconds between two snapshots of the live allocation view.
REFRESH_INTERVAL = 1.0

#: Seconds a job stays in the allocation view after the scheduler forgot its tasks, and how many such jobs.
ENDED_JOB_SECONDS = 600.0
ENDED_JOBS_KEPT = 20

#: Profile used by ``up()`` when none is named.
DEFAULT_PROFILE = "local"

#: Default compression tolerance: largest accepted drop of the accuracy metric, in points.
COMPRESSION_TOLERANCE = 1.0


#: Values the running server's configuration set (``LeptonApp`` traits), by the environment
#: variable they stand for; they win over that variable. See :func:`configure`.
_CONFIGURED: dict[str, str] = {}


def configure(values: dict[str, str]) -> None:
    """Make ``values`` (environment variable name -> value) the ones in force in this process.

    The server extension passes the settings its configuration files set; every function
    here reads them before the environment. Each call replaces the previous set; an empty
    one leaves the environment alone in charge.
    """
    _CONFIGURED.clear()
    _CONFIGURED.update(values)


def setting(name: str, default: str = "") -> str:
    """The value in force for ``name``: configured, else ``$name``, else ``default``."""
    if name in _CONFIGURED:
        return _CONFIGURED[name]
    return os.environ.get(name, default)


def home() -> Path:
    """The Lepton home directory (``$LEPTON_HOME`` or ``~/.lepton``); created on demand."""
    path = Path(setting("LEPTON_HOME") or Path.home() / ".lepton").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def profiles_path() -> Path:
    """User cluster profiles (YAML)."""
    return Path(os.environ.get("LEPTON_PROFILES") or home() / "profiles.yaml")


def policy_path() -> Path:
    """The access policy (YAML) read by the server extension."""
    return Path(setting("LEPTON_POLICY") or home() / "policy.yaml")


def audit_path() -> Path:
    """The hash-chained audit log (JSONL)."""
    return Path(os.environ.get("LEPTON_AUDIT") or home() / "audit.jsonl")


def registry_path() -> Path:
    """Root of the model registry."""
    return Path(os.environ.get("LEPTON_REGISTRY") or home() / "registry")


def keys_path() -> Path:
    """Team keys, user signing keys and cluster CAs."""
    path = home() / "keys"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def tokens_path() -> Path:
    """Hashes of personal access tokens."""
    return home() / "tokens.json"


def templates_path() -> Path:
    """Team template notebooks: ``templates/<team>/*.ipynb``.

    ``$LEPTON_TEMPLATES``, else the checkout's ``templates/`` (editable installs),
    else the copy a wheel installs under ``<prefix>/share/lepton_lab/templates``.
    """
    if os.environ.get("LEPTON_TEMPLATES"):
        return Path(os.environ["LEPTON_TEMPLATES"])
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if checkout.is_dir():
        return checkout
    import sys

    return Path(sys.prefix) / "share" / "lepton_lab" / "templates"


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252})$")


def _address(value: str, name: str, port_allowed: bool) -> str:
    value = value.strip()
    for scheme in ("tls://", "tcp://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
    host, sep, port = value.rpartition(":") if value.rfind(":") > value.rfind("]") else (value, "", "")
    ok = bool(_HOST.match(host)) and (not sep or (port_allowed and port.isdigit() and 0 < int(port) < 65536))
    if not ok:
        from .errors import ConfigError

        form = "a host name or IP, with an optional :port" if port_allowed else "a host name or IP, no port"
        raise ConfigError(f"{name}: {form} (IPv6 in brackets), got {value!r}")
    return value


def scheduler_host() -> str:
    """Where the schedulers the server starts listen: ``$LEPTON_SCHEDULER_HOST``.

    Loopback (``127.0.0.1``) by default, so only this machine can join; a team
    deployment sets an interface address, or ``0.0.0.0`` for every interface.
    """
    return _address(setting("LEPTON_SCHEDULER_HOST") or "127.0.0.1", "LEPTON_SCHEDULER_HOST", False)


def scheduler_advertise() -> str:
    """The address (``host`` or ``host:port``) workers and clients are told to reach the
    schedulers at: ``$LEPTON_SCHEDULER_ADVERTISE``; empty means the listen address.

    Set it when the listen address is not the one other machines reach (a NAT, a
    DNS name, ``0.0.0.0``). Join tokens and connection details carry it.
    """
    raw = setting("LEPTON_SCHEDULER_ADVERTISE")
    return _address(raw, "LEPTON_SCHEDULER_ADVERTISE", True) if raw.strip() else ""


def autostart_profile() -> str:
    """The profile the server extension starts a cluster of for the local user at launch
    (``LEPTON_AUTOSTART``, as ``make lab`` sets it); empty starts none."""
    return setting("LEPTON_AUTOSTART").strip()


def gc_freeze() -> bool:
    """Whether the server freezes its start-up objects out of the garbage collector's
    sight (``LEPTON_GC_FREEZE=0`` keeps every object collectable)."""
    return setting("LEPTON_GC_FREEZE", "1") != "0"


def schedulers_in_process() -> bool:
    """Whether the server runs its clusters' schedulers in its own event loop (``LEPTON_SCHEDULERS=in-process``,
    as ``LocalCluster`` does) or as processes of their own (``process``, the default)."""
    raw = setting("LEPTON_SCHEDULERS", "process").strip() or "process"
    if raw not in ("process", "in-process"):
        from .errors import ConfigError

        raise ConfigError(f"LEPTON_SCHEDULERS: process or in-process, got {raw!r}")
    return raw == "in-process"


def watch_interval() -> float:
    """Seconds between the cluster service's passes that meter spend and stop idle clusters
    (``LEPTON_WATCH_INTERVAL``, default 30)."""
    raw = setting("LEPTON_WATCH_INTERVAL", "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        from .errors import ConfigError

        raise ConfigError(f"LEPTON_WATCH_INTERVAL: seconds from 0 to 3600, got {raw!r}")
    return value


def deployment() -> str:
    """Which part of which deployment this process is.

    ``personal`` (the default): the services run inside this Jupyter server.
    ``control-plane``: the team deployment's JupyterHub service, which alone holds them
    (``LEPTON_ROLE=control-plane``, set by ``python -m lepton_lab.hub.control_plane``).
    ``client``: a user's own server of the team deployment, which forwards to the
    control plane at ``$LEPTON_CONTROL_PLANE_URL``.
    """
    if os.environ.get("LEPTON_ROLE") == "control-plane":
        return "control-plane"
    return "client" if control_plane_url() else "personal"


def control_plane_url() -> str:
    """The team deployment's control plane (``$LEPTON_CONTROL_PLANE_URL``, e.g.
    ``http://127.0.0.1:8090/services/lepton/``), or empty in a personal deployment."""
    url = os.environ.get("LEPTON_CONTROL_PLANE_URL", "").strip()
    if url and not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        from .errors import ConfigError

        raise ConfigError(f"LEPTON_CONTROL_PLANE_URL must be an http(s) URL, got {url!r}")
    return url.rstrip("/") + "/" if url else ""
