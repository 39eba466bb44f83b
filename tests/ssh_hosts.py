"""Two SSH hosts on this machine: network namespaces on one bridge, each with its own ``sshd``.

Shared by the SSH tests and ``bench/ssh.py``. The namespaces hang off a bridge (addresses in
127/8 with ``route_localnet`` on both sides); each runs an OpenSSH daemon of the caller's own
(private host key, key-only login, a fresh client key in ``authorized_keys``), never the
machine's service. :func:`ssh_hosts` puts back bridge, namespaces, daemons, ``route_localnet``
and ``/run/sshd`` on exit, even on failure. Needs root, ``ip``, ``sshd`` and ``ssh-keygen``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"


class RigMissing(RuntimeError):
    """Something the hosts need is not on this machine (the message says what to install)."""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=check)


def netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def wait_for_port(host: str, port: int, daemon: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise RuntimeError(f"sshd exited at once: {daemon.stderr.read() if daemon.stderr else ''}")
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on {host}:{port} within {timeout} s")


def _tools() -> tuple[str, str]:
    ip = shutil.which("ip")
    if ip is None:
        raise RigMissing("the `ip` command (iproute2) is missing: `apt-get install iproute2`")
    if os.geteuid() != 0:
        raise RigMissing("SSH hosts in network namespaces need root")
    if not os.access(SSHD, os.X_OK):
        raise RigMissing("sshd is missing: `apt-get install openssh-server` (or `make browser-deps`)")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise RigMissing("ssh-keygen is missing: `apt-get install openssh-client`")
    return ip, keygen


def _stop(daemon: subprocess.Popen) -> None:
    daemon.terminate()
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(timeout=20)
    if daemon.stderr is not None:
        daemon.stderr.close()


@contextlib.contextmanager
def ssh_hosts(tmp: Path, count: int = 2) -> Iterator[dict[str, Any]]:
    """``count`` hosts; yields ``{"host_ip", "hosts", "user", "key", "known_hosts"}``.

    ``host_ip`` is this machine's address on the bridge; each of ``hosts`` is
    ``{"ns", "outside", "ip", "port", "address", "sshd"}`` (``address`` is ``ip:port``).
    """
    ip, keygen = _tools()
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid() % 100000}"
    bridge = f"lsb{tag}"
    net = random.Random(os.getpid() + 7).randint(64, 250)
    host_ip = f"127.{net}.3.1"
    user = getpass.getuser()
    client_key = tmp / "client_key"
    sh(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "lepton-test", "-f", str(client_key))
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    made_run_dir = not os.path.isdir("/run/sshd")
    if made_run_dir:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    saved = sh("sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()
    hosts: list[dict[str, Any]] = []
    daemons: list[subprocess.Popen] = []
    try:
        sh(ip, "link", "add", bridge, "type", "bridge")
        sh(ip, "addr", "add", f"{host_ip}/24", "dev", bridge)
        sh(ip, "link", "set", bridge, "up")
        sh("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", f"net.ipv4.conf.{bridge}.route_localnet=1")
        known = []
        for i in range(2, 2 + count):
            ns, outside, inside = f"lepssh{tag}x{i}", f"lso{tag}x{i}", f"lsi{tag}x{i}"
            ns_ip = f"127.{net}.3.{i}"
            port = random.Random(os.getpid() + i).randint(20000, 60000)
            sh(ip, "netns", "add", ns)
            hosts.append({"ns": ns, "outside": outside, "ip": ns_ip, "port": port, "address": f"{ns_ip}:{port}"})
            sh(ip, "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh(ip, "link", "set", inside, "netns", ns)
            sh(ip, "link", "set", outside, "master", bridge)
            sh(ip, "link", "set", outside, "up")
            sh(ip, "netns", "exec", ns, ip, "addr", "add", f"{ns_ip}/24", "dev", inside)
            sh(ip, "netns", "exec", ns, ip, "link", "set", inside, "up")
            sh(ip, "netns", "exec", ns, ip, "link", "set", "lo", "up")
            sh(ip, "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
               f"net.ipv4.conf.{inside}.route_localnet=1")
            home = tmp / f"host{i}"
            home.mkdir()
            host_key = home / "host_key"
            sh(keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
            config = home / "sshd_config"
            config.write_text(
                f"ListenAddress {ns_ip}:{port}\n"
                f"HostKey {host_key}\n"
                f"PidFile {home / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {tmp / 'authorized_keys'}\n"
                f"AllowUsers {user}\n"
                "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
                "Subsystem sftp internal-sftp\n"
            )
            daemon = subprocess.Popen([ip, "netns", "exec", ns, SSHD, "-D", "-e", "-f", str(config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            daemons.append(daemon)
            hosts[-1]["sshd"] = daemon
            wait_for_port(ns_ip, port, daemon)
            public = (home / "host_key.pub").read_text().split()
            known.append(f"[{ns_ip}]:{port} {public[0]} {public[1]}\n")
        (tmp / "known_hosts").write_text("".join(known))
        yield {"host_ip": host_ip, "hosts": hosts, "user": user, "key": str(client_key),
               "known_hosts": str(tmp / "known_hosts")}
    finally:
        for daemon in daemons:
            _stop(daemon)
        for h in hosts:  # sessions the daemons forked, and anything else left in the namespace
            for pid in sh(ip, "netns", "pids", h["ns"], check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
        for h in hosts:
            sh(ip, "link", "del", h["outside"], check=False)
            sh(ip, "netns", "del", h["ns"], check=False)
        sh(ip, "link", "del", bridge, check=False)
        sh("sysctl", "-qw", f"net.ipv4.conf.all.route_localnet={saved or 0}", check=False)
        if made_run_dir:
            shutil.rmtree("/run/sshd", ignore_errors=True)


__all__ = ["SSHD", "RigMissing", "netns_inode", "sh", "ssh_hosts", "wait_for_port"]
