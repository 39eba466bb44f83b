"""A real JupyterHub with real Linux accounts, for tests run as root.

    with OSUsers("alice", "bob") as users, Hub(venv, users.names, groups={...}) as hub:
        hub.start_server(users["alice"].name)
        out, err = run_in_kernel(hub, users["alice"].name, "import os; print(os.getuid())")

``OSUsers`` creates accounts with random suffixes and removes them (and every process they
left) at the end; ``Hub`` runs JupyterHub, its proxy and its managed services on free
loopback ports, spawning each user's server as that user's own account.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pprint
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.hub.kernel import Kernel, KernelError, run_in_kernel  # noqa: F401  (part of the rig's API)
from tests.hub.shared_venv import install_proxy

RIG_SERVICE = "lepton-rig"  # the rig's own admin service, whose token drives the Hub API


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError("the hub tests need root: they create Linux accounts and JupyterHub spawns "
                              "servers as them (run the `hub` suite as root)")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _suffix() -> str:
    return secrets.token_hex(2)


# --- accounts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OSUser:
    """One test account: ``name`` is the real (suffixed) account name, also its JupyterHub name."""

    short: str
    name: str
    uid: int
    gid: int
    home: Path


def processes_of(uids: set[int]) -> list[psutil.Process]:
    """Live processes whose real or effective uid is one of ``uids``."""
    found = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            u = p.info["uids"]
            if u and (u.real in uids or u.effective in uids) and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_processes_of(uids: set[int], timeout: float = 10.0) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL, every process of ``uids``; returns those still alive after that."""
    procs = processes_of(uids)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout / 2)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout / 2)
    return processes_of(uids)


class OSUsers:
    """Linux accounts ``lt-<short>-<hex>`` made with ``useradd -m``, removed with everything they ran.

    ``groups`` maps short group names to short user names; each becomes an OS group
    ``lt-<group>-<hex>`` (``self.groups[short]`` is its real name). Homes are ``home_mode``
    (0700 by default: one person's files are theirs alone, as on a well-run shared machine).
    """

    def __init__(self, *shorts: str, groups: Mapping[str, Sequence[str]] | None = None, home_mode: int = 0o700):
        if len(set(shorts)) != len(shorts):
            raise ValueError(f"duplicate account names in {shorts}")
        self.shorts = shorts
        self.group_members = dict(groups or {})
        self.home_mode = home_mode
        self.users: dict[str, OSUser] = {}
        self.groups: dict[str, str] = {}

    def __getitem__(self, short: str) -> OSUser:
        return self.users[short]

    @property
    def names(self) -> list[str]:
        """The real account names, in the order given."""
        return [self.users[s].name for s in self.shorts]

    def __enter__(self) -> OSUsers:
        require_root()
        try:
            for short in self.shorts:
                name = f"lt-{short}-{_suffix()}"
                subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
                pw = pwd.getpwnam(name)
                self.users[short] = OSUser(short, name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
                os.chmod(pw.pw_dir, self.home_mode)
            for group, members in self.group_members.items():
                real = f"lt-{group}-{_suffix()}"
                subprocess.run(["groupadd", real], check=True, capture_output=True)
                self.groups[group] = real
                for m in members:
                    subprocess.run(["usermod", "-aG", real, self.users[m].name], check=True, capture_output=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process of the accounts, delete them, their groups and their files in /tmp."""
        uids = {u.uid for u in self.users.values()}
        left = kill_processes_of(uids)
        for u in self.users.values():
            subprocess.run(["userdel", "-r", "-f", u.name], capture_output=True)
        for real in self.groups.values():
            subprocess.run(["groupdel", real], capture_output=True)
        for scratch in (Path("/tmp"), Path("/dev/shm")):
            for entry in scratch.iterdir():
                try:
                    owner = entry.lstat().st_uid
                except FileNotFoundError:
                    continue
                if owner in uids:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        still = [u.name for u in self.users.values() if _account_exists(u.name)]
        self.users.clear()
        if left or still:
            raise RuntimeError(f"test accounts not cleaned: processes {[p.pid for p in left]}, accounts {still}")


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


# --- the Hub ------------------------------------------------------------------------------


# --- the control plane's side of a deployment ----------------------------------------------


def group_policy(teams: Mapping[str, str]) -> str:
    """A policy whose teams (``team -> OS group``) have the members of their group as analysts."""
    rules = "".join(f"  {group}: {{{team}: analyst}}\n" for team, group in teams.items())
    return f"version: 1\nteams: [{', '.join(teams)}]\nmembers: {{}}\ngroups:\n{rules}"


def control_plane_state(owner: OSUser, policy: str, where: Path | None = None) -> Path:
    """The control plane's state directory (``where``, default ``<owner's home>/state``): 0700, ``owner``'s,
    holding ``policy`` as its ``policy.yaml``."""
    state = where or owner.home / "state"
    state.mkdir(mode=0o700)
    (state / "policy.yaml").write_text(policy)
    for path in (state, state / "policy.yaml"):
        os.chown(path, owner.uid, owner.gid)
    return state


def sudoers_rule(path: Path, control: str, run_as: str, python: Path) -> None:
    """Let ``control`` run exactly the account-process command as ``run_as`` (users, or ``%group``)."""
    path.write_text(f"{control} ALL=({run_as}) NOPASSWD: {python} -m lepton_lab.hub.account_process\n")
    path.chmod(0o440)
    subprocess.run(["visudo", "-cqf", str(path)], check=True)


def deploy_env(venv: Path, control: OSUser, state: Path, users_group: str, team_groups: Sequence[str],
               port: int | None = None) -> dict[str, str]:
    """``$LEPTON_HUB_*`` for deploy/hub/jupyterhub_config.py: its site values, for this machine's accounts."""
    site = {"VENV": str(venv), "ACCOUNT": control.name, "HOME": str(state), "PORT": str(port or free_port()),
            "USERS_GROUP": users_group, "TEAM_GROUPS": ",".join(team_groups), "ADMIN_GROUPS": ""}
    return {f"LEPTON_HUB_{k}": v for k, v in site.items()}


class HubError(RuntimeError):
    """The Hub did not do what the rig asked; the message ends with the Hub's log tail."""


class Hub:
    """JupyterHub + configurable-http-proxy on free loopback ports, run as root from ``venv``.

    - ``users``: JupyterHub user names (the real account names), all allowed; a browser logs in
      with ``password`` (``admin_password`` for ``admin_users``; the shared-password authenticator).
    - ``groups``: Hub group name -> user names (``c.JupyterHub.load_groups``).
    - ``services``: extra ``c.JupyterHub.services`` entries (a managed service with ``user`` runs
      as that OS account; its ``cwd`` defaults to that account's home).
    - ``roles``: extra ``c.JupyterHub.load_roles`` entries.
    - ``server_token_scopes``: ``c.Spawner.server_token_scopes`` (what a server's, hence its
      kernels', ``JUPYTERHUB_API_TOKEN`` may do; JupyterHub grants only the part the user holds).
    - ``spawner_env``: added to ``c.Spawner.environment``.
    - ``extra_config``: Python appended to the generated ``jupyterhub_config.py``.
    - ``base_config``: a deployment's own config file, loaded first; then the rig adds only its
      ports, proxy, state directory, its admin service and ``services``/``roles`` (the
      arguments above that shape users, groups and spawning are then ignored: the file decides).
    - ``hub_env``: added to the Hub's environment (and so to its managed services').
    """

    def __init__(
        self,
        venv: Path,
        users: Sequence[str],
        *,
        groups: Mapping[str, Sequence[str]] | None = None,
        admin_users: Sequence[str] = (),
        services: Sequence[Mapping[str, Any]] = (),
        roles: Sequence[Mapping[str, Any]] = (),
        server_token_scopes: Sequence[str] | None = None,
        spawner_env: Mapping[str, str] | None = None,
        extra_config: str = "",
        password: str | None = None,
        start_timeout: float = 90.0,
        base_config: Path | None = None,
        hub_env: Mapping[str, str] | None = None,
    ):
        self.venv = Path(venv)
        self.users = list(users)
        self.groups = {k: list(v) for k, v in (groups or {}).items()}
        self.admin_users = list(admin_users)
        self.services = [dict(s) for s in services]
        self.roles = [dict(r) for r in roles]
        self.server_token_scopes = list(server_token_scopes) if server_token_scopes is not None else None
        self.spawner_env = dict(spawner_env or {})
        self.extra_config = extra_config
        self.password = password or secrets.token_urlsafe(24)
        self.admin_password = secrets.token_urlsafe(32)
        self.start_timeout = start_timeout
        self.base_config = Path(base_config) if base_config is not None else None
        self.hub_env = dict(hub_env or {})
        self.admin_token = secrets.token_hex(32)
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="lepton-hub-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._family: list[psutil.Process] = []

    # -- configuration ------------------------------------------------------------------

    def _services(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"name": RIG_SERVICE, "api_token": self.admin_token}]
        for s in self.services:
            s = dict(s)
            if s.get("user") and "cwd" not in s:
                s["cwd"] = pwd.getpwnam(s["user"]).pw_dir
            out.append(s)
        return out

    def config_text(self) -> str:
        """The ``jupyterhub_config.py`` this Hub runs with."""
        rig_role = {"name": "lepton-rig-admin", "scopes": ["admin:users", "admin:servers", "tokens", "admin:groups",
                                                           "read:hub", "list:services", "read:services",
                                                           "access:servers", "access:services"],
                    "services": [RIG_SERVICE]}
        # Always the rig's: loopback ports, the proxy, and the Hub's state in this run's directory.
        settings: dict[str, Any] = {
            "JupyterHub.bind_url": self.url,
            "JupyterHub.hub_bind_url": f"http://127.0.0.1:{self.hub_port}",
            "ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{self.proxy_api_port}",
            "ConfigurableHTTPProxy.command": [str(install_proxy())],
            "JupyterHub.db_url": f"sqlite:///{self.dir}/jupyterhub.sqlite",
            "JupyterHub.cookie_secret_file": f"{self.dir}/jupyterhub_cookie_secret",
            "JupyterHub.cleanup_servers": True,
            "Spawner.start_timeout": 120,
            "Spawner.http_timeout": 90,
        }
        lines = ["# Written by tests/hub/rig.py for one test run.", "c = get_config()  # noqa"]
        if self.base_config is not None:
            # A deployment's own file decides users, groups, services, roles and spawning.
            lines.append(f"load_subconfig({str(self.base_config)!r})  # noqa")
            lines.append(f"c.JupyterHub.services = list(c.JupyterHub.services) + {self._services()!r}")
            lines.append(f"c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + {[rig_role, *self.roles]!r}")
        else:
            path = f"{self.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            settings.update({
                "JupyterHub.authenticator_class": "shared-password",
                "SharedPasswordAuthenticator.user_password": self.password,
                "SharedPasswordAuthenticator.admin_password": self.admin_password,
                "Authenticator.allowed_users": set(self.users),
                "Authenticator.admin_users": set(self.admin_users),
                "JupyterHub.load_groups": {g: {"users": members} for g, members in self.groups.items()},
                "JupyterHub.services": self._services(),
                "JupyterHub.load_roles": [rig_role, *self.roles],
                "Spawner.cmd": [f"{self.venv}/bin/jupyterhub-singleuser"],
                "Spawner.ip": "127.0.0.1",
                "Spawner.environment": {"PATH": path, **self.spawner_env},
            })
            if self.server_token_scopes is not None:
                settings["Spawner.server_token_scopes"] = self.server_token_scopes
        for key, value in settings.items():
            lines.append(f"c.{key} = {pprint.pformat(value, width=110)}")
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Hub:
        require_root()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.dir.chmod(0o700)
        (self.dir / "jupyterhub_config.py").write_text(self.config_text())
        env = {"PATH": f"{self.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8", "HOME": str(self.dir), **self.hub_env}
        log = open(self.dir / "jupyterhub.log", "wb")
        self.proc = subprocess.Popen([f"{self.venv}/bin/jupyterhub", "-f", str(self.dir / "jupyterhub_config.py")],
                                     cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        end = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise HubError(f"jupyterhub exited {self.proc.returncode} while starting{self._tail()}")
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > end:
                raise HubError(f"jupyterhub did not answer on {self.url}/hub/api in {self.start_timeout:.0f}s"
                               f"{self._tail()}")
            time.sleep(0.25)
        self._remember_family()

    def _remember_family(self) -> None:
        assert self.proc is not None
        try:
            self._family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            self._family = []

    def close(self) -> None:
        """Stop every user server through the API, then the Hub (it stops its proxy and services)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                for user in self.users:
                    self.stop_server(user)
            finally:
                self._remember_family()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        for p in self._family:  # the proxy and managed services, should the Hub have left one
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        """The Hub's log so far (its proxy's and managed services' output included)."""
        try:
            return (self.dir / "jupyterhub.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 40) -> str:
        return "\n--- jupyterhub log (tail) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    # -- the REST API ---------------------------------------------------------------------

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        """A request to ``/hub/api/<path>`` through the proxy, with the rig's admin token by default."""
        headers = {"Authorization": f"token {token or self.admin_token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}/hub/api/{path.lstrip('/')}", headers=headers,
                                timeout=kwargs.pop("timeout", 30), **kwargs)

    def _ok(self, r: requests.Response, *codes: int) -> requests.Response:
        if r.status_code not in codes:
            raise HubError(f"{r.request.method} {r.url} -> {r.status_code} {r.text[:300]}{self._tail(20)}")
        return r

    def token_for(self, user: str, *, scopes: Sequence[str] | None = None, note: str = "lepton test") -> str:
        """A new API token owned by ``user`` (all the user's rights unless ``scopes`` narrows them)."""
        body: dict[str, Any] = {"note": note, "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = list(scopes)
        r = self._ok(self.api("POST", f"users/{user}/tokens", json=body), 200, 201)
        return r.json()["token"]

    def user_model(self, user: str) -> dict[str, Any]:
        return self._ok(self.api("GET", f"users/{user}"), 200).json()

    def start_server(self, user: str, timeout: float = 120.0) -> str:
        """Spawn ``user``'s server (as that OS account) and wait until it answers; its URL."""
        self._ok(self.api("POST", f"users/{user}/server"), 201, 202, 400)
        end = time.monotonic() + timeout
        while True:
            server = self.user_model(user).get("servers", {}).get("")
            if server and server.get("ready"):
                break
            if server is None:
                raise HubError(f"{user}'s server stopped while starting{self._tail()}")
            if time.monotonic() > end:
                raise HubError(f"{user}'s server not ready in {timeout:.0f}s{self._tail()}")
            time.sleep(0.25)
        url = f"{self.url}/user/{user}/"
        token = self.token_for(user, note="rig readiness check")
        while requests.get(f"{url}api/status", headers={"Authorization": f"token {token}"}, timeout=10).status_code \
                != 200:
            if time.monotonic() > end:
                raise HubError(f"{url}api/status does not answer{self._tail()}")
            time.sleep(0.25)
        return url

    def stop_server(self, user: str, timeout: float = 60.0) -> None:
        """Stop ``user``'s server, if running, and wait until the Hub says it is gone."""
        r = self.api("DELETE", f"users/{user}/server")
        if r.status_code == 404:
            return
        self._ok(r, 202, 204, 400)
        end = time.monotonic() + timeout
        while self.user_model(user).get("servers", {}).get(""):
            if time.monotonic() > end:
                raise HubError(f"{user}'s server did not stop in {timeout:.0f}s{self._tail()}")
            time.sleep(0.25)

    def server_pid(self, user: str) -> int:
        """The pid of ``user``'s single-user server, as the Hub's spawner recorded it."""
        state = self.user_model(user)["servers"][""].get("state") or {}
        if "pid" not in state:
            raise HubError(f"no pid in {user}'s server state {json.dumps(state)}")
        return int(state["pid"])

    def service_url(self, name: str) -> str:
        """Where a service with a ``url`` is reachable through the proxy."""
        return f"{self.url}/services/{name}/"
