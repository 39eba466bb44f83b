"""Which SSH hosts checkpoint storage may be reached on: the ones whose key is already known.

fsspec's SFTP filesystem accepts and remembers any host key it meets first (paramiko's
``AutoAddPolicy``), so whoever answers on the address gets the run's checkpoints. Lepton
connects only to a host whose key is in a known hosts file, as ``ssh`` does with
``StrictHostKeyChecking yes``: ``$LEPTON_KNOWN_HOSTS`` (files separated by ``:``) when
set, else ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``. A host key policy
set in fsspec's own configuration (``FSSPEC_SFTP_HOST_KEY_POLICY``) is left to apply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import paramiko

ENV = "LEPTON_KNOWN_HOSTS"


def known_hosts_files() -> list[Path]:
    """The files host keys are looked up in, in order."""
    value = os.environ.get(ENV, "").strip()
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")]


class KnownHostsOnly(paramiko.MissingHostKeyPolicy):
    """Accept a host only if its key is in :func:`known_hosts_files`; refuse it in one line otherwise."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        files = known_hosts_files()
        keys = paramiko.HostKeys()
        for path in files:
            if path.is_file():
                keys.load(str(path))
        if keys.check(hostname, key):
            return
        known = keys.lookup(hostname)
        what = "a different key than the one known for it" if known else "a key in no known hosts file"
        raise paramiko.SSHException(
            f"SSH host {hostname} presented {what} ({', '.join(map(str, files))}); add its key "
            f"(ssh-keyscan, after checking it) or name the file in ${ENV}")

    def __repr__(self) -> str:  # one filesystem instance per process and host (fsspec keys its cache on this)
        return f"{type(self).__name__}()"


#: One instance, so fsspec's instance cache (keyed on the arguments' text) reuses connections.
POLICY = KnownHostsOnly()


def sftp_options(protocol: str) -> dict[str, Any]:
    """Storage options for an ``sftp`` or ``ssh`` URL: the known-hosts check, unless fsspec's config sets one."""
    import fsspec

    configured = {**fsspec.config.conf.get("sftp", {}), **fsspec.config.conf.get(protocol, {})}
    return {} if "host_key_policy" in configured else {"host_key_policy": POLICY}
