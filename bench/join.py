"""Joining a worker: ``lepton-lab worker --join-token`` vs a plain ``dask worker`` with TLS files.

    .venv/bin/python bench/join.py [--quick] [--pairs 5] [--strict]

One Jupyter server with the Lepton extension (``lepton_lab.testing.start_jupyter``) runs a
TLS cluster created through its REST API. Each run starts one worker process of site
``edge-join`` on this machine and is timed from the process start to the worker ready on
the scheduler (registered there, as a client of the cluster sees it); the process is
then stopped and gone from the scheduler before the next run:

* lepton: ``lepton-lab worker --site edge-join --join-token T --server URL``: redeems the
  one-time token at the server (a fresh key and certificate), then joins; the token is
  issued before the clock starts, as an admin hands it over beforehand;
* plain: ``dask worker tls://... --tls-ca-file --tls-cert --tls-key --name edge-join-N
  --resources "edge-join=1 edge=1" --no-dashboard``, with a certificate of the same site
  from the same CA written beforehand (the files an admin would have copied over).

Both: one worker, one thread, 512 MiB, a nanny. The order alternates (A/B, then B/A) over
``--pairs`` pairs after one unmeasured warm-up of each; medians with their spread
(min-max). Target: lepton <= 1.2 x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

SITE = "edge-join"
BIN = Path(sys.executable).parent
FIELDS = ("cert_pem", "key_pem", "ca_pem", "role", "common_name", "expires")


def _spread(xs: list[float]) -> list[float]:
    return [round(min(xs), 3), round(max(xs), 3)]


def _names(client) -> set[str]:
    return {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}


def timed_join(client, cmd: list[str], name: str, log: Path, timeout: float = 120) -> float:
    """Seconds from starting ``cmd`` to worker ``name`` on the scheduler; the process is stopped after."""
    with open(log, "w") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            while name not in _names(client):
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
                if time.perf_counter() - t > timeout:
                    raise RuntimeError(f"{name} did not join within {timeout} s: {log.read_text()[-2000:]}")
                time.sleep(0.01)
            return time.perf_counter() - t
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            end = time.monotonic() + 60
            while name in _names(client) and time.monotonic() < end:
                time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 pairs")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "join.json")
    args = parser.parse_args()
    pairs = 2 if args.quick else args.pairs

    from distributed import Client

    from lepton_lab.security.certs import ClusterCA, IssuedCert
    from lepton_lab.security.identity import local_user
    from lepton_lab.services import issue_join_token
    from lepton_lab.testing import start_jupyter

    tmp = Path(tempfile.mkdtemp(prefix="lepton-joinbench-"))
    policy = f"version: 1\nteams: [bench]\nmembers:\n  {local_user()}: {{bench: admin}}\n"
    server = start_jupyter(tmp, policy, app="jupyter_server")
    client = None
    try:
        code, c = server.api("lepton/api", "clusters", method="POST",
                             body={"team": "bench", "workers": {"cloud": 1, "edge": 0}}, timeout=300)
        if code != 201:
            raise RuntimeError(f"creating the cluster: {code} {c}")
        code, cred = server.api("lepton/api", "clusters", c["id"], "credentials")
        if code != 200:
            raise RuntimeError(f"credentials: {code} {cred}")
        address = c["scheduler_address"]
        mine = IssuedCert.from_dict({k: cred[k] for k in FIELDS})
        client = Client(address, security=mine.security(), timeout=30, set_as_default=False)
        records = json.loads((server.home / "clusters.json").read_text())
        ca = ClusterCA.load(records[c["id"]]["ca_dir"])
        common = ["--nthreads", "1", "--memory-limit", "512MiB"]
        counter = iter(range(10_000))

        def lepton() -> float:
            n = next(counter)
            token, _ = issue_join_token(c["id"], SITE, home=server.home)
            cmd = [str(BIN / "lepton-lab"), "worker", "--site", SITE, "--join-token", token, "--server",
                   server.url, "--index", str(n), *common]
            return timed_join(client, cmd, f"{SITE}-{n}", tmp / f"lepton-{n}.log")

        def plain() -> float:
            n = next(counter)
            issued = ca.issue(f"{SITE}-worker-{n}", "worker", ("127.0.0.1", "localhost"), timedelta(hours=1),
                              site=SITE, kind="edge")
            files = {}
            for part, text in (("ca", issued.ca_pem), ("cert", issued.cert_pem), ("key", issued.key_pem)):
                files[part] = tmp / f"plain-{n}.{part}.pem"
                files[part].write_text(text)
                files[part].chmod(0o600)
            cmd = [str(BIN / "dask"), "worker", address, "--tls-ca-file", str(files["ca"]),
                   "--tls-cert", str(files["cert"]), "--tls-key", str(files["key"]), "--name", f"{SITE}-{n}",
                   "--resources", f"{SITE}=1 edge=1", "--no-dashboard", *common]
            return timed_join(client, cmd, f"{SITE}-{n}", tmp / f"plain-{n}.log")

        lepton(), plain()  # warm-up: file caches
        lp, p = [], []
        for i in range(pairs):
            if i % 2 == 0:
                lp.append(lepton())
                p.append(plain())
            else:
                p.append(plain())
                lp.append(lepton())
    finally:
        if client is not None:
            client.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ml, mp = statistics.median(lp), statistics.median(p)
    ratio = ml / mp
    results = {"join": {
        "compares": "lepton-lab worker --join-token (redeemed at the server: fresh key + certificate) vs dask worker "
                    "with TLS files of the same site and CA, to one TLS scheduler; process start to the worker "
                    "registered on the scheduler",
        "lepton_s": round(ml, 3), "plain_s": round(mp, 3), "ratio": round(ratio, 3), "target": "<= 1.2",
        "lepton_spread_s": _spread(lp), "plain_spread_s": _spread(p), "pairs": pairs, "cpus": os.cpu_count()}}
    print("Joining one worker to a running TLS cluster, process start to ready on the scheduler:")
    print(f"  lepton-lab worker --join-token   {ml:7.3f} s  (spread {_spread(lp)})")
    print(f"  dask worker with TLS files       {mp:7.3f} s  (spread {_spread(p)})")
    print(f"  ratio lepton / plain             {ratio:7.3f}    target <= 1.2, median of {pairs} alternating pairs")
    return write_results(args.out, results, all_met=ratio <= 1.2, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
