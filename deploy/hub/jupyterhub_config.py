"""JupyterHub configuration for a Lepton Lab team deployment (an example to adapt).

Who runs what:

- The Hub runs as root (``jupyterhub -f jupyterhub_config.py``) so that its default
  ``LocalProcessSpawner`` can start each person's Jupyter server as that person's own OS
  account. Their kernels, terminals and files are theirs alone.
- The Lepton control plane runs as a Hub-managed service under its own OS account
  (``lepton``). It alone holds the policy, the audit log, the model registry with the team
  keys, the clusters' CAs and the cluster manager, in a state directory only it can read.
  It authenticates every caller by that caller's own Hub token.
- Each person's server loads the Lepton extension in client mode (``LEPTON_CONTROL_PLANE_URL``
  below): the sidebar's calls are forwarded to the control plane with that person's identity,
  and kernels call it with their own ``JUPYTERHUB_API_TOKEN``.
- Clusters the control plane starts for a person run as that person's account, through a
  sudo rule that allows exactly one command.

One-time set-up, as root (paths match the SITE values below):

    # A Python every account can run: 0755 all the way up the path, lepton_lab non-editable.
    python3 -m venv /opt/lepton/venv
    /opt/lepton/venv/bin/pip install jupyterhub lepton_lab
    npm install -g configurable-http-proxy

    # The control plane's account and its private state directory.
    useradd --system --home-dir /var/lib/lepton --shell /usr/sbin/nologin lepton
    install -d -o lepton -g lepton -m 0700 /var/lib/lepton
    # /var/lib/lepton/policy.yaml maps the Hub groups below to teams, e.g.
    #   groups: {lepton-medical: {medical: analyst}, lepton-finance: {finance: analyst}}

    # People: one OS account each, in the OS group of their team (and in lepton-users).
    groupadd lepton-users; groupadd lepton-medical; groupadd lepton-finance
    useradd -m -G lepton-users,lepton-medical alice && chmod 0700 /home/alice

    # Let the control plane start cluster processes as the people (and nothing else):
    echo 'lepton ALL=(%lepton-users) NOPASSWD: /opt/lepton/venv/bin/python -m lepton_lab.hub.account_process' \\
        > /etc/sudoers.d/lepton && chmod 0440 /etc/sudoers.d/lepton

    install -d -m 0700 /srv/jupyterhub
    cd /srv/jupyterhub && jupyterhub -f /path/to/this/jupyterhub_config.py

Every value a site must edit is marked ``SITE``; each can also be given as
``$LEPTON_HUB_<NAME>`` in the Hub's environment (a trial run, the tests).
"""

import grp
import os

c = get_config()  # noqa: F821  (provided by JupyterHub when it loads this file)


def site(name: str, default: str) -> str:
    """A site value: ``$LEPTON_HUB_<name>`` when set (a trial run, a test), else the default here."""
    return os.environ.get(f"LEPTON_HUB_{name}", default)


# --- SITE: edit these defaults ---------------------------------------------------------------

VENV = site("VENV", "/opt/lepton/venv")  # SITE: the venv every account can run (jupyterhub, lepton_lab)
LEPTON_ACCOUNT = site("ACCOUNT", "lepton")  # SITE: the control plane's OS account
LEPTON_HOME = site("HOME", "/var/lib/lepton")  # SITE: its state directory, owned by it, mode 0700
LEPTON_PORT = int(site("PORT", "8090"))  # SITE: a free loopback port for the control plane
USERS_GROUP = site("USERS_GROUP", "lepton-users")  # SITE: the OS group of everyone who may log in
# SITE: one OS group per team. At each Hub start their members become the Hub groups of the
# same names, which the control plane's policy maps to teams (its `groups:` section).
TEAM_GROUPS = site("TEAM_GROUPS", "lepton-medical,lepton-finance").split(",")
# SITE: OS groups whose members administer the Hub (may be empty).
ADMIN_GROUPS = {g for g in site("ADMIN_GROUPS", "lepton-admins").split(",") if g}
# SITE: the public address; terminate TLS in front of it, or set c.JupyterHub.ssl_cert/ssl_key.
c.JupyterHub.bind_url = site("BIND_URL", "http://:8000")
# SITE: where the Hub keeps its own state (0700, root's).
HUB_STATE = site("STATE", "/srv/jupyterhub")
c.JupyterHub.db_url = f"sqlite:///{HUB_STATE}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{HUB_STATE}/jupyterhub_cookie_secret"

# --- who may log in ---------------------------------------------------------------------------

# PAM checks the machine's own accounts and passwords (the default authenticator).
c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.allowed_groups = {USERS_GROUP}
c.PAMAuthenticator.admin_groups = ADMIN_GROUPS
# Accounts are never created by the Hub: people get an account from the site's usual process.
c.LocalAuthenticator.create_system_users = False


def os_group_members(name: str) -> list[str]:
    """The accounts listed in OS group ``name`` (none if the group does not exist)."""
    try:
        return list(grp.getgrnam(name).gr_mem)
    except KeyError:
        return []


c.JupyterHub.load_groups = {group: {"users": os_group_members(group)} for group in TEAM_GROUPS}

# --- each person's server, as their own account ----------------------------------------------

c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [f"{VENV}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.ip = "127.0.0.1"
c.Spawner.environment = {
    "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
    # Client mode: the Lepton extension in this server holds no policy, keys or registry of its
    # own and forwards to the control plane.
    "LEPTON_CONTROL_PLANE_URL": f"http://127.0.0.1:{LEPTON_PORT}/services/lepton/",
}
# What a server's (and so its kernels') JUPYTERHUB_API_TOKEN may do: JupyterHub's defaults
# (report activity, reach this server) plus calling the control plane. The Hub grants only
# the part the person holds, so the `lepton-user` role below decides who can.
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=lepton",
]

# --- the Lepton control plane ----------------------------------------------------------------

c.JupyterHub.services = [
    {
        "name": "lepton",
        "url": f"http://127.0.0.1:{LEPTON_PORT}",
        "command": [f"{VENV}/bin/python", "-m", "lepton_lab.hub.control_plane"],
        "user": LEPTON_ACCOUNT,  # the Hub starts it as this OS account, never as root
        "cwd": LEPTON_HOME,
        "environment": {"LEPTON_HOME": LEPTON_HOME, "PATH": f"{VENV}/bin:/usr/bin:/bin"},
        "display": False,  # used through the sidebar and the kernels, not as a page of its own
    },
]

c.JupyterHub.load_roles = [
    {
        # Who may call the control plane at all: the members of a team group. Everyone else
        # is turned away by the Hub before the control plane's own policy is asked.
        "name": "lepton-user",
        "description": "Call the Lepton control plane with one's own identity",
        "scopes": ["access:services!service=lepton"],
        "groups": TEAM_GROUPS,
    },
    {
        # The control plane reads a caller's Hub groups (mapped to teams by its policy).
        "name": "lepton-control-plane",
        "description": "Read users' names and groups",
        "scopes": ["read:users:name", "read:users:groups"],
        "services": ["lepton"],
    },
]
