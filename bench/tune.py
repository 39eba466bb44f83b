"""Tuning benchmark: ``lepton_lab.tune`` against the same Optuna study run with plain Optuna + Dask futures.

    .venv/bin/python bench/tune.py [--quick] [--trials 64] [--strict]

One small dataset (``make_classification``, 4,000 rows × 20 features, a 20 %
holdout), XGBoost, ``rounds`` boosting rounds, the space
``max_depth=int:2..8 eta=float:0.01..0.3:log subsample=float:0.5..1``, no
pruning, on one 2-worker cluster. The throughput pair uses Optuna's random
sampler with the same seed, so both ways train exactly the same trials:

* ``lepton``: ``lepton_lab.tune`` (study stored in a scratch LEPTON_HOME,
  per-round reports, one trial per worker);
* ``plain``: an in-memory ``optuna`` study driven by ask-and-tell, each trial an
  ``xgboost.train`` task submitted with ``client.submit`` on the scattered data,
  two in flight (one per worker);
* ``lepton-1``: ``lepton`` again with the cluster scaled to one worker (the
  speed-up of two workers over one);
* ``tpe``: ``lepton_lab.tune`` with TPE (the best score it reaches against
  random search with the same budget).

``plain`` and ``lepton`` run ``--repeat`` times interleaved and the fastest of each
counts: other processes on these machines only ever slow a run down.
Target: lepton ≥ 0.9 × plain trials per minute. ``--quick`` runs 16 trials of
30 rounds. Results go to ``bench/results/tune.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_io import write_results

RESULTS = Path(__file__).parent / "results" / "tune.json"
CLUSTER = "bench-tune"
SPACE = "max_depth=int:2..8 eta=float:0.01..0.3:log subsample=float:0.5..1"


def make_data():
    from sklearn.datasets import make_classification

    from lepton_lab.ml.train import _split_indices

    X, y = make_classification(4000, 20, n_informative=8, flip_y=0.05, random_state=0)
    train_idx, test_idx = _split_indices(len(X), 0.2, seed=0)  # the split lepton makes
    return X, y, train_idx, test_idx


def _plain_trial(X, y, X_test, y_test, params: dict[str, Any], rounds: int) -> float:
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    dtrain = xgb.QuantileDMatrix(X, y, nthread=1)
    dtest = xgb.QuantileDMatrix(X_test, y_test, ref=dtrain, nthread=1)
    booster = xgb.train({"objective": "binary:logistic", "eval_metric": "auc", "tree_method": "hist",
                         "nthread": 1, "seed": 0, **params}, dtrain, num_boost_round=rounds,
                        evals=[(dtest, "holdout")], verbose_eval=False)
    return float(roc_auc_score(y_test, booster.inplace_predict(X_test)))


def run_plain(client, X, y, train_idx, test_idx, trials: int, rounds: int) -> dict[str, Any]:
    """The same study with plain Optuna: ask, ``client.submit``, wait for the first done, tell."""
    import optuna
    from distributed import wait

    from lepton_lab.ml.search_space import parse_space

    space = parse_space(SPACE)
    start = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    data = client.scatter([X[train_idx], y[train_idx], X[test_idx], y[test_idx]], broadcast=True, hash=False)
    running: dict[Any, Any] = {}
    asked = 0
    while asked < trials or running:
        while asked < trials and len(running) < len(workers):
            trial = study.ask(space)
            running[client.submit(_plain_trial, *data, trial.params, rounds, pure=False)] = trial
            asked += 1
        done, _ = wait(list(running), return_when="FIRST_COMPLETED")
        for f in done:
            study.tell(running.pop(f), f.result())
    seconds = time.perf_counter() - start
    for f in data:
        f.release()
    return {"seconds": seconds, "trials": trials, "best": study.best_value}


def run_lepton(X, y, trials: int, rounds: int, study: str, sampler: str = "random") -> dict[str, Any]:
    import lepton_lab

    start = time.perf_counter()
    result = lepton_lab.tune("xgboost", data=(X, y), space=SPACE, study=study, team="finance", trials=trials,
                             rounds=rounds, sampler=sampler, pruner="none", progress=False, view=False,
                             params={"eval_metric": "auc"})
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "trials": result.ran_now, "best": result.value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 trials of 30 rounds")
    parser.add_argument("--trials", type=int, default=None, help="trials per way (default 64; 16 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="boosting rounds (default 50; 30 with --quick)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs of plain and lepton (fastest counts)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    trials = args.trials or (16 if args.quick else 64)
    rounds = args.rounds or (30 if args.quick else 50)
    load_start = os.getloadavg()
    scratch = None
    if "LEPTON_HOME" not in os.environ:  # the studies go to a scratch home, removed at the end
        scratch = os.environ["LEPTON_HOME"] = tempfile.mkdtemp(prefix="lepton-bench-tune-")

    import lepton_lab

    handle = lepton_lab.up(name=CLUSTER, cloud=2, edge=0)
    runs: dict[str, dict[str, Any]] = {}
    try:
        X, y, train_idx, test_idx = make_data()
        # Warm-up (imports of xgboost and optuna on the workers and here), not counted.
        run_plain(handle.client, X, y, train_idx, test_idx, 2, 2)
        run_lepton(X, y, 2, 2, "warm-up")
        stamp = time.strftime("%H%M%S")
        pairs: dict[str, list[dict[str, Any]]] = {"plain": [], "lepton": []}
        for i in range(args.repeat):  # interleaved: the machine's load moves timings a lot
            pairs["plain"].append(run_plain(handle.client, X, y, train_idx, test_idx, trials, rounds))
            pairs["lepton"].append(run_lepton(X, y, trials, rounds, f"bench-{stamp}-{i}"))
        for k, v in pairs.items():
            runs[k] = {**min(v, key=lambda r: r["seconds"]),
                       "each_seconds": [r["seconds"] for r in v]}
        runs["lepton"]["workers"] = len(handle.client.scheduler_info(n_workers=-1)["workers"])
        runs["tpe"] = run_lepton(X, y, trials, rounds, f"bench-tpe-{stamp}", sampler="tpe")
        lepton_lab.scale(1, "cloud", name=CLUSTER)
        deadline = time.monotonic() + 30
        while len(handle.client.scheduler_info(n_workers=-1)["workers"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        runs["lepton-1"] = run_lepton(X, y, trials, rounds, f"bench-one-{stamp}")
        runs["lepton-1"]["workers"] = len(handle.client.scheduler_info(n_workers=-1)["workers"])
    finally:
        lepton_lab.down(CLUSTER)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    per_min = {k: 60 * r["trials"] / r["seconds"] for k, r in runs.items()}
    ratio = per_min["lepton"] / per_min["plain"]
    speedup = runs["lepton-1"]["seconds"] / runs["lepton"]["seconds"]
    targets = {"throughput_vs_plain": (ratio, 0.9, ratio >= 0.9)}
    print(f"XGBoost tuning: {trials} trials × {rounds} rounds, 3,200 × 20 train, 800 holdout; {SPACE}")
    print(f"{'way':<10} {'seconds':>8} {'trials/min':>11} {'best AUC':>9}")
    for k, r in runs.items():
        print(f"{k:<10} {r['seconds']:>8.2f} {per_min[k]:>11.1f} {r['best']:>9.4f}")
    print(f"speed-up of 2 workers over 1 (lepton): {speedup:.2f}x")
    print(f"best AUC, TPE vs random with the same budget: {runs['tpe']['best']:.4f} vs {runs['lepton']['best']:.4f}")
    all_met = True
    for name, (value, target, met) in targets.items():
        all_met &= met
        print(f"{name:<22} {value:>8.3f}  target >= {target:<6} {'yes' if met else 'NO'}")
    out = {
        "benchmark": "tune",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
        "size": {"rows": int(len(X)), "features": int(X.shape[1]), "trials": trials, "rounds": rounds,
                 "quick": args.quick, "space": SPACE, "repeat": args.repeat},
        "runs": runs, "trials_per_minute": per_min, "throughput_vs_plain": ratio,
        "speedup_two_workers_vs_one": speedup,
        "best_tpe_vs_random": {"tpe": runs["tpe"]["best"], "random": runs["lepton"]["best"]},
        "targets": {k: {"value": v, "target": t, "met": m} for k, (v, t, m) in targets.items()},
    }
    return write_results(args.out, out, all_met=all_met, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
