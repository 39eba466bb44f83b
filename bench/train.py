"""Training benchmark: ``lepton_lab.ml.train`` against plain XGBoost and plain ``xgboost.dask``.

    .venv/bin/python bench/train.py [--quick] [--repeat 3] [--strict]

One dataset (``make_classification``, 500k train rows × 50 features + a 100k
holdout; ``--quick``: 100k + 20k), 100 rounds, ``hist``, depth 6. Three ways,
all starting from the same in-memory ``X, y`` and the same holdout rows, each
timed from there to a trained booster and its holdout AUC:

* ``single``: ``xgboost.train`` in this process, ``nthread`` = all cores;
* ``dask``: ``xgboost.dask.train`` on the 2-worker cluster, the data scattered
  to the workers first (``da.from_array`` would send it inside the graph);
* ``lepton``: ``lepton_lab.ml.train.train("xgboost", ...)`` on the same cluster,
  strategy ``auto``, progress events and checkpoints on (its defaults).

The runs are interleaved (each repeat runs all three in turn) and medians are
reported, because other processes on these machines move timings a lot. Target:
lepton ≤ 1.1 × the faster baseline, AUC within 0.002 of both. Results go to
``bench/results/train.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import write_results

RESULTS = Path(__file__).parent / "results" / "train.json"
CLUSTER = "bench-train"
PARAMS = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6}


def make_data(n_train: int, n_test: int, features: int = 50):
    from sklearn.datasets import make_classification

    from lepton_lab.ml.train import _split_indices

    X, y = make_classification(n_train + n_test, features, n_informative=20, random_state=0)
    train_idx, test_idx = _split_indices(len(X), n_test, seed=0)  # the split lepton makes
    return X, y, train_idx, test_idx


def run_single(X, y, train_idx, test_idx, rounds: int) -> dict[str, Any]:
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    nthread = len(os.sched_getaffinity(0))
    dtrain = xgb.QuantileDMatrix(X[train_idx], y[train_idx], nthread=nthread)
    t_data = time.perf_counter()
    booster = xgb.train({**PARAMS, "nthread": nthread}, dtrain, num_boost_round=rounds)
    t_train = time.perf_counter()
    auc = roc_auc_score(y[test_idx], booster.inplace_predict(X[test_idx]))
    end = time.perf_counter()
    return {"seconds": end - start, "auc": float(auc), "nthread": nthread,
            "phases": {"data+dmatrix": t_data - start, "train": t_train - t_data, "evaluate": end - t_train}}


def run_dask(client, X, y, train_idx, test_idx, rounds: int) -> dict[str, Any]:
    import dask.array as da
    from sklearn.metrics import roc_auc_score
    from xgboost import dask as dxgb

    start = time.perf_counter()
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    futures = []

    def place(rows):
        xs, ys = [], []
        for w, part in zip(workers, np.array_split(rows, len(workers))):
            fx, fy = client.scatter([X[part], y[part]], workers=[w], hash=False)
            futures.extend([fx, fy])
            xs.append(da.from_delayed(fx, shape=(len(part), X.shape[1]), dtype=X.dtype))
            ys.append(da.from_delayed(fy, shape=(len(part),), dtype=y.dtype))
        return da.concatenate(xs), da.concatenate(ys)

    X_tr, y_tr = place(train_idx)
    X_te, y_te = place(test_idx)
    dtrain = dxgb.DaskQuantileDMatrix(client, X_tr, y_tr)
    out = dxgb.train(client, PARAMS, dtrain, num_boost_round=rounds)
    pred = dxgb.predict(client, out["booster"], X_te).compute()
    auc = roc_auc_score(y_te.compute(), pred)
    seconds = time.perf_counter() - start
    for f in futures:
        f.release()
    return {"seconds": seconds, "auc": float(auc)}


def run_lepton(client, X, y, test_size: int, rounds: int) -> dict[str, Any]:
    from lepton_lab.ml.train import train

    start = time.perf_counter()
    result = train("xgboost", data=(X, y), name="bench", rounds=rounds, params={"max_depth": 6},
                   test_size=test_size, progress=False, client=client)
    seconds = time.perf_counter() - start
    phases = dict(result.ranks[0].get("seconds", {})) if result.ranks else {}
    phases["kernel side"] = seconds - sum(phases.values())  # placing data, waiting, collecting
    return {"seconds": seconds, "auc": result.metrics["auc"], "strategy": result.strategy,
            "events": result.progress_events, "workers": result.workers, "phases": phases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k + 20k rows instead of 500k + 100k")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each (median)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    n_train, n_test = (100_000, 20_000) if args.quick else (500_000, 100_000)
    load_start = os.getloadavg()

    import tempfile

    import lepton_lab

    # Checkpoints and the like go to a scratch home unless the caller chose one.
    os.environ.setdefault("LEPTON_HOME", tempfile.mkdtemp(prefix="lepton-bench-train-"))
    env_before = dict(os.environ)
    handle = lepton_lab.up(name=CLUSTER, cloud=2, edge=0)
    # ML-NOTES pitfall: a process LocalCluster rewrites this process's OMP_NUM_THREADS & co.
    # lepton_lab.up restores them; check, and restore by hand if not, so the single-process
    # baseline gets every core.
    changed = sorted(k for k in set(env_before) | set(os.environ) if env_before.get(k) != os.environ.get(k))
    if changed:
        for k in changed:
            if k in env_before:
                os.environ[k] = env_before[k]
            else:
                os.environ.pop(k, None)
    try:
        X, y, train_idx, test_idx = make_data(n_train, n_test)
        runs: dict[str, list[dict[str, Any]]] = {"single": [], "dask": [], "lepton": []}
        # One warm-up of each path (imports on the workers, first allocation), not counted.
        warm = slice(0, 20_000)
        run_single(X[warm], y[warm], np.arange(16_000), np.arange(16_000, 20_000), 2)
        run_dask(handle.client, X[warm], y[warm], np.arange(16_000), np.arange(16_000, 20_000), 2)
        run_lepton(handle.client, X[warm], y[warm], 4_000, 2)
        for _ in range(args.repeat):
            runs["single"].append(run_single(X, y, train_idx, test_idx, args.rounds))
            runs["dask"].append(run_dask(handle.client, X, y, train_idx, test_idx, args.rounds))
            runs["lepton"].append(run_lepton(handle.client, X, y, n_test, args.rounds))
    finally:
        lepton_lab.down(CLUSTER)

    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    auc = {k: statistics.median(r["auc"] for r in v) for k, v in runs.items()}
    fastest = min(med["single"], med["dask"])
    ratio = med["lepton"] / fastest
    auc_gap = max(abs(auc["lepton"] - auc["single"]), abs(auc["lepton"] - auc["dask"]))
    targets = {"ratio_to_fastest": (ratio, 1.1, ratio <= 1.1), "auc_gap": (auc_gap, 0.002, auc_gap <= 0.002)}

    print(f"XGBoost {n_train:,} × {X.shape[1]} train, {n_test:,} holdout, {args.rounds} rounds, "
          f"hist, depth 6; median of {args.repeat} interleaved runs")
    print(f"{'way':<8} {'seconds':>8} {'runs':<26} {'AUC':>7}")
    for k in ("single", "dask", "lepton"):
        each = ", ".join(f"{r['seconds']:.2f}" for r in runs[k])
        print(f"{k:<8} {med[k]:>8.2f} {each:<26} {auc[k]:>7.4f}")
    print(f"lepton strategy: {runs['lepton'][-1]['strategy']}")
    for k in ("single", "lepton"):
        phases = {p: statistics.median(r["phases"][p] for r in runs[k]) for p in runs[k][0]["phases"]}
        print(f"{k} phases (median s): " + ", ".join(f"{p} {v:.2f}" for p, v in phases.items()))
    all_met = True
    for name, (value, target, met) in targets.items():
        all_met &= met
        print(f"{name:<18} {value:>8.4f}  target {'<=':>2} {target:<6} {'yes' if met else 'NO'}")

    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(),
                    "env_restored_by_hand": changed},
        "size": {"train": n_train, "test": n_test, "features": int(X.shape[1]), "rounds": args.rounds,
                 "quick": args.quick, "repeat": args.repeat},
        "median_seconds": med, "auc": auc, "runs": runs,
        "ratio_to_fastest": ratio, "auc_gap": auc_gap,
        "targets": {k: {"value": v, "target": t, "met": m} for k, (v, t, m) in targets.items()},
    }
    return write_results(args.out, out, all_met=all_met, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
