"""`make hub`: the team deployment on this machine, with throwaway accounts, until Ctrl-C.

Runs deploy/hub/jupyterhub_config.py as written (PAM logins, the Lepton control plane as a
Hub service under its own account, each person's server as their own account) with:

- three new Linux accounts: the control plane's, a medical analyst and a finance analyst
  (random suffixes, random passwords printed once), in new OS groups mapped to the teams;
- a Python environment every account can run (Debian's python3, lepton_lab copied in);
- the sudoers rule that lets the control plane start clusters as the analysts;
- JupyterHub on http://127.0.0.1:$HUB_PORT (8000 by default).

Stopping it (Ctrl-C) stops every server and removes the accounts, their files and
processes, the sudoers rule and the state. Needs root; asks before creating accounts
unless HUB_YES=1.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hub.rig import Hub, OSUsers, control_plane_state, deploy_env, group_policy, require_root, sudoers_rule  # noqa: E402
from tests.hub.shared_venv import make_shared_venv  # noqa: E402

CONFIG = ROOT / "deploy" / "hub" / "jupyterhub_config.py"


def consent() -> bool:
    if os.environ.get("HUB_YES") == "1":
        return True
    answer = input("make hub creates 3 Linux accounts (removed again on Ctrl-C) and a sudoers rule. "
                   "Go on? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def main() -> int:
    try:
        require_root()
    except PermissionError as e:
        print(f"make hub: {e}", file=sys.stderr)
        return 2
    if not consent():
        print("make hub: nothing created")
        return 1
    port = int(os.environ.get("HUB_PORT", "8000"))
    print("building the shared Python environment (a minute the first time)...", flush=True)
    venv = make_shared_venv(extra=("torch==2.13.0", "xgboost>=2.1"))
    sudoers = Path(f"/etc/sudoers.d/lepton-demo-{os.getpid()}")
    with OSUsers("lepton", "alice", "bob",
                 groups={"users": ["alice", "bob"], "medical": ["alice"], "finance": ["bob"]}) as users:
        try:
            cp = users["lepton"]
            teams = {"medical": users.groups["medical"], "finance": users.groups["finance"]}
            state = control_plane_state(cp, group_policy(teams))
            people = [users["alice"].name, users["bob"].name]
            passwords = {name: secrets.token_urlsafe(9) for name in people}
            subprocess.run(["chpasswd"], input="".join(f"{n}:{p}\n" for n, p in passwords.items()).encode(),
                           check=True)
            sudoers_rule(sudoers, cp.name, f"%{users.groups['users']}", venv / "bin" / "python")
            hub = Hub(venv, people, base_config=CONFIG,
                      hub_env=deploy_env(venv, cp, state, users.groups["users"], list(teams.values())))
            hub.port, hub.url = port, f"http://127.0.0.1:{port}"
            with hub:
                print(f"\nJupyterHub: {hub.url}  (Ctrl-C stops it and removes everything)")
                print(f"  {people[0]} / {passwords[people[0]]}   medical analyst")
                print(f"  {people[1]} / {passwords[people[1]]}   finance analyst")
                print(f"  control plane: {cp.name}, state {state} (0700)\n", flush=True)
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                try:
                    stop.wait()
                except KeyboardInterrupt:
                    pass
                print("stopping...", flush=True)
        finally:
            sudoers.unlink(missing_ok=True)
    print("removed the accounts, the sudoers rule and the state")
    return 0


if __name__ == "__main__":
    sys.exit(main())
