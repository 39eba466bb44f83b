"""This checkout against an earlier revision of the project, through the public API only.

    python bench/revisions.py --before <git revision> [--pairs 5]

The earlier revision is checked out into a temporary git worktree (removed afterwards)
and imported from there in place of this one; both run in this environment. Each pair
runs the same workload once per revision, in turn (before, after, before, ...), each in a
fresh process with its own empty ``LEPTON_HOME``, so a machine's drift hits both sides.
The workload, timed phase by phase inside the process:

- ``import``: ``import lepton_lab`` and one attribute of the API;
- ``up``: an inline profile of a cloud site and two edge sites, one worker each, answering;
- ``train``: XGBoost on 20,000 x 20 rows, 40 rounds, on the cloud site;
- ``publish`` and ``load``: the trained model into the team registry and back, verified;
- ``compress``: a 64-32-2 MLP to int8, measured on 2,000 rows;
- ``federate``: that MLP over the two edge sites, 3 rounds, secure aggregation;
- ``down``: the cluster stopped.

Reported per phase: each revision's median seconds and the median of the per-pair ratios
after / before (below 1 is faster now). Results go to ``bench/results/revisions.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PHASES = ("import", "up", "train", "publish", "load", "compress", "federate", "down")
PROFILE = {"name": "revisions", "sites": [{"name": "cloud", "kind": "cloud", "workers": 1},
                                          {"name": "edge-a", "kind": "edge", "workers": 1},
                                          {"name": "edge-b", "kind": "edge", "workers": 1}]}


def site_data(site: str):
    """A federated site's rows: its own slice of a fixed synthetic set."""
    import numpy as np

    rng = np.random.default_rng(1 if site.endswith("a") else 2)
    X = rng.normal(size=(1_000, 64)).astype("float32")
    return X, (X[:, :8].sum(axis=1) > 0).astype("int64")


def workload() -> dict[str, float]:
    """Run the workload in this process; seconds per phase."""
    laps: dict[str, float] = {}
    last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        laps[name] = now - last
        last = now

    import lepton_lab

    _ = lepton_lab.up
    lap("import")
    import numpy as np

    cluster = lepton_lab.up(PROFILE, name="revisions")
    cluster.client.submit(int, 1).result()
    lap("up")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 20))
    y = (X[:, :4].sum(axis=1) + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    result = lepton_lab.train("xgboost", data=(X, y), name="revisions", rounds=40, site="cloud",
                              strategy="single", progress=False)
    lap("train")
    lepton_lab.publish(result, "revisions", team="medical")
    lap("publish")
    lepton_lab.load("revisions", team="medical")
    lap("load")
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    Xt, yt = site_data("edge-c")
    lepton_lab.compress(net, data=(Xt[:2_000], yt[:2_000]), quantize="int8", force=True, progress=False)
    lap("compress")
    lepton_lab.federate(net, loader=site_data, sites=["edge-a", "edge-b"], rounds=3, secure=True, progress=False)
    lap("federate")
    lepton_lab.down("revisions")
    lap("down")
    return laps


def run_once(checkout: Path) -> dict[str, float]:
    """The workload in a fresh process importing ``lepton_lab`` from ``checkout``."""
    with tempfile.TemporaryDirectory(prefix="lepton-rev-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
        env.update(LEPTON_HOME=home, PYTHONPATH=str(checkout))
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--workload"],
                             cwd=home, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"workload failed under {checkout}:\n{out.stderr[-3000:]}")
    laps = json.loads(out.stdout.strip().splitlines()[-1])
    where = Path(laps.pop("module"))
    if not where.is_relative_to(checkout):
        raise SystemExit(f"lepton_lab came from {where}, not from {checkout}")
    return laps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="git revision to compare this checkout with")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workload:
        laps = workload()
        import lepton_lab

        print(json.dumps({**laps, "module": lepton_lab.__file__}))
        return 0
    if not args.before:
        ap.error("--before REVISION is required")
    # Only here: the workload must import lepton_lab from the checkout it is given.
    sys.path.insert(0, str(ROOT))
    from bench.results_io import write_results
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True,
                         text=True)
    if rev.returncode:
        ap.error(f"--before: {args.before!r} is not a revision of this repository")
    tmp = Path(tempfile.mkdtemp(prefix="lepton-before-"))
    worktree = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), args.before], cwd=ROOT, check=True)
    try:
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        run_once(worktree), run_once(ROOT)  # not counted: fills the disk cache and compiles bytecode
        for i in range(args.pairs):
            runs["before"].append(run_once(worktree))
            runs["after"].append(run_once(ROOT))
            print(f"pair {i + 1}/{args.pairs}: " + ", ".join(
                f"{p} {runs['before'][-1][p]:.2f}/{runs['after'][-1][p]:.2f}" for p in PHASES), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT)
        subprocess.run(["rm", "-rf", str(tmp)])
    table = {}
    print(f"\n{'phase':8} {'before s':>9} {'after s':>9} {'after/before':>13}")
    for p in PHASES:
        before = statistics.median(r[p] for r in runs["before"])
        after = statistics.median(r[p] for r in runs["after"])
        ratio = statistics.median(a[p] / b[p] for a, b in zip(runs["after"], runs["before"]))
        table[p] = {"before_s": before, "after_s": after, "ratio": ratio}
        print(f"{p:8} {before:9.3f} {after:9.3f} {ratio:13.2f}")
    total = statistics.median(sum(a.values()) / sum(b.values()) for a, b in zip(runs["after"], runs["before"]))
    print(f"{'whole':8} {'':9} {'':9} {total:13.2f}")
    results = {"before": rev.stdout.strip(), "pairs": args.pairs, "phases": table, "whole_ratio": total,
               "runs": runs}
    return write_results(ROOT / "bench" / "results" / "revisions.json", results, all_met=True, strict=False)


if __name__ == "__main__":
    sys.exit(main())
