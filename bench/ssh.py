"""SSH launch: a ``launch: ssh`` profile site vs distributed's ``SSHCluster``, to the same two hosts.

    .venv/bin/python bench/ssh.py [--quick] [--pairs 5] [--strict]   (as root)

The hosts are two network namespaces on one bridge, each running its own ``sshd``
(``tests/ssh_hosts.py``, the rig the SSH tests use). Each run is timed from the call to
both workers ready on the scheduler, then the cluster is stopped before the next run:

* lepton: ``Services.create_cluster`` of a profile whose one site has ``launch: ssh`` and
  both hosts (a worker on each): policy, quota and audit, the cluster's own CA, TLS, a
  fresh worker certificate copied to each host, the scheduler on this machine
  advertised on the bridge;
* plain: ``SSHCluster([a, a, b])``: its scheduler on host a over SSH, a worker on a and
  one on b, plain TCP (what ``SSHCluster`` sets up unless given certificate files).

The order alternates (A/B, then B/A) over ``--pairs`` pairs after one unmeasured warm-up
of each; medians with their spread (min-max). Target: lepton <= 1.2 x plain. Namespaces,
daemons and every process are removed when done, also on failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

POLICY = """
version: 1
teams: [bench]
members:
  bench: {bench: analyst}
quotas:
  teams:
    bench: {max_workers: 8, max_clusters: 3}
trusted: [bench]
"""
SITE = "edge-ssh"


def _spread(xs: list[float]) -> list[float]:
    return [round(min(xs), 3), round(max(xs), 3)]


def lepton_run(services, hosts: dict) -> float:
    from lepton_lab.services import Actor

    who = Actor("bench")
    t = time.perf_counter()
    c = services.create_cluster(who, team="bench", profile="ssh-bench", name="ssh-bench")
    try:
        services._client(c).wait_for_workers(2, timeout=120)
        return time.perf_counter() - t
    finally:
        services.stop_cluster(who, "ssh-bench")


def plain_run(hosts: dict) -> float:
    from distributed import Client
    from distributed.deploy.ssh import SSHCluster

    a, b = hosts["hosts"]

    def options(h: dict) -> dict:
        return {"port": h["port"], "username": hosts["user"], "client_keys": [hosts["key"]],
                "known_hosts": hosts["known_hosts"], "connect_timeout": 30}

    t = time.perf_counter()
    cluster = SSHCluster([a["ip"], a["ip"], b["ip"]], connect_options=[options(a), options(a), options(b)],
                         worker_options={"nthreads": 1, "memory_limit": "512MiB"},
                         scheduler_options={"host": a["ip"], "dashboard": False}, remote_python=sys.executable)
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            return time.perf_counter() - t
    finally:
        cluster.close()


def left_in(ns: str) -> list[int]:
    """Processes still in namespace ``ns`` other than its sshd (a run must leave none)."""
    from tests.ssh_hosts import SSHD, netns_inode

    want = f"net:[{netns_inode(ns)}]"
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == want and os.readlink(f"/proc/{pid}/exe") != SSHD:
                found.append(pid)
        except OSError:
            continue
    return found


def settle(hosts: dict, timeout: float = 60) -> None:
    """Wait until the last run's processes on the hosts are gone."""
    end = time.monotonic() + timeout
    while any(left_in(h["ns"]) for h in hosts["hosts"]):
        if time.monotonic() > end:
            raise RuntimeError(f"processes left on the hosts: {[left_in(h['ns']) for h in hosts['hosts']]}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 pairs")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ssh.json")
    args = parser.parse_args()
    pairs = 2 if args.quick else args.pairs
    # SSHCluster logs every line its remote processes print.
    logging.getLogger("distributed.deploy.ssh").setLevel(logging.WARNING)

    import yaml

    from lepton_lab.cluster.launcher import ClusterManager
    from lepton_lab.security.policy import parse_policy_text
    from lepton_lab.services import Services
    from tests.ssh_hosts import RigMissing, ssh_hosts

    tmp = Path(tempfile.mkdtemp(prefix="lepton-sshbench-"))
    try:
        with ssh_hosts(tmp / "rig") as hosts:
            a, b = hosts["hosts"]
            home = tmp / "home"
            home.mkdir()
            site = {"name": SITE, "kind": "edge", "workers": 2, "threads": 1, "memory": "512MiB",
                    "launch": "ssh", "hosts": [a["address"], b["address"]], "ssh_user": hosts["user"],
                    "ssh_key": hosts["key"], "known_hosts": hosts["known_hosts"], "python": sys.executable}
            (home / "profiles.yaml").write_text(yaml.safe_dump({"profiles": {"ssh-bench": {"sites": [
                {"name": "cloud", "kind": "cloud", "workers": 0}, site]}}}))
            os.environ.update(LEPTON_HOME=str(home), LEPTON_SCHEDULER_HOST="0.0.0.0",
                              LEPTON_SCHEDULER_ADVERTISE=hosts["host_ip"], LEPTON_WATCH_INTERVAL="3600")
            for var in ("LEPTON_AUDIT", "LEPTON_PROFILES", "LEPTON_POLICY"):
                os.environ.pop(var, None)
            services = Services(parse_policy_text(POLICY), home=home, manager=ClusterManager())
            try:
                lepton_run(services, hosts)  # the first of each pays for imports
                settle(hosts)
                plain_run(hosts)
                settle(hosts)
                lepton, plain = [], []
                for i in range(pairs):
                    for which in (("lepton", "plain") if i % 2 == 0 else ("plain", "lepton")):
                        if which == "lepton":
                            lepton.append(lepton_run(services, hosts))
                        else:
                            plain.append(plain_run(hosts))
                        settle(hosts)
            finally:
                services.manager.stop_all()
                services.close()
    except RigMissing as e:
        print(f"bench/ssh.py: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ml, mp = statistics.median(lepton), statistics.median(plain)
    ratio = ml / mp
    results = {"ssh_launch": {
        "compares": "a launch: ssh profile site (Services.create_cluster: TLS, own CA, a certificate copied to each "
                    "host, scheduler here) vs SSHCluster([a, a, b]) (scheduler on a over SSH, plain TCP); "
                    "2 workers, one per host, from the call to both ready on the scheduler",
        "lepton_s": round(ml, 3), "plain_s": round(mp, 3), "ratio": round(ratio, 3), "target": "<= 1.2",
        "lepton_spread_s": _spread(lepton), "plain_spread_s": _spread(plain), "pairs": pairs,
        "cpus": os.cpu_count()}}
    print("SSH launch, 2 workers on 2 hosts (network namespaces with their own sshd), to both ready:")
    print(f"  lepton launch: ssh site    {ml:7.3f} s  (spread {_spread(lepton)})")
    print(f"  distributed SSHCluster     {mp:7.3f} s  (spread {_spread(plain)})")
    print(f"  ratio lepton / plain       {ratio:7.3f}    target <= 1.2, median of {pairs} alternating pairs")
    return write_results(args.out, results, all_met=ratio <= 1.2, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
