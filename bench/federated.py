"""Federated-learning benchmarks on three hospital sites, in one run.

    python bench/federated.py [--quick] [--out bench/results/federated.json]

The breast-cancer training set is split into three disjoint, unevenly sized parts
(50 / 30 / 20 %), one per edge site of a local cluster (1 cloud + 3 edge workers,
512MiB each); each site's loader slices its own part on its own worker.

1. **accuracy**: federated (FedAvg, secure aggregation) logistic regression and MLP
   against the same model trained centrally on the pooled data for as many epochs
   (target gap <= 1 point after <= 30 rounds; 2 local epochs a round, SGD lr 0.1, momentum
   0.9), averaged over five train/test splits (one with ``--quick``): the test set holds
   143 samples, so one split moves in steps of 0.7 points;
2. **time per round**: secure aggregation vs plain FedAvg, same run otherwise, runs
   interleaved, median over rounds 2.. (round 1 also makes the keys; reported apart)
   (target ratio <= 1.5);
3. **differential privacy**: ε at δ = 1e-5 after the rounds of a DP run (clip 1.0, noise
   ×1.0, central DP) and its accuracy;
4. **scaling** (a second cluster of 24 edge sites, 256 synthetic samples each): a round
   at 3, 6, 12 and 24 sites with secure aggregation against a plain-Dask FedAvg of the
   same model (same shards, the same local training function, ``client.submit`` per
   site pinned to its worker, numpy mean), each Lepton round followed by a plain-Dask
   round so that the two alternate round by round, Lepton's modes alternated run by run,
   median round; the ratio secure ÷ plain (target <= 1.3 at 12 sites), over every measured
   round and per run, Lepton without secure aggregation as a
   middle step, how each phase (keys, train, unmask) grows with the sites, and what one
   control message to every site costs: Lepton's ``rpc`` (of a coroutine, as the keys and
   unmasking calls, and of a plain function, run in a thread) against a plain ``Client.run``.

``--only scaling`` (or any of accuracy, round_time, dp, scaling, comma-separated) runs a selection.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SITES = ["edge-hospital-a", "edge-hospital-b", "edge-hospital-c"]
PROFILES = """\
profiles:
  fedbench:
    description: one cloud worker and three hospitals
    sites:
      - {name: cloud, kind: cloud, workers: 1, threads: 1, memory: 512MiB}
      - {name: edge-hospital-a, kind: edge, workers: 1, threads: 1, memory: 512MiB}
      - {name: edge-hospital-b, kind: edge, workers: 1, threads: 1, memory: 512MiB}
      - {name: edge-hospital-c, kind: edge, workers: 1, threads: 1, memory: 512MiB}
"""


def split(seed: int):
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0)
    Xtr, Xte = ((Xtr - mean) / std).astype(np.float32), ((Xte - mean) / std).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(Xtr))
    parts = dict(zip(SITES, np.split(perm, [int(0.5 * len(perm)), int(0.8 * len(perm))])))
    return Xtr, ytr, Xte, yte, parts


def make_loader(Xtr, ytr, parts):
    def load_site(site):
        idx = parts[site]
        return Xtr[idx], ytr[idx]

    return load_site


def models():
    import torch
    from torch import nn

    def logreg():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(30, 1))

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))

    return {"logreg": logreg, "mlp": mlp}


def accuracy(model, X, y) -> float:
    import torch

    with torch.no_grad():
        return float(((model(torch.as_tensor(X)).reshape(-1) > 0).numpy() == y).mean())


def central(model, Xtr, ytr, Xte, yte, epochs: int, lr=0.1, batch_size=32) -> float:
    import torch

    X, y = torch.as_tensor(Xtr), torch.as_tensor(ytr, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X[idx]).reshape(-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return accuracy(model, Xte, yte)


def bench_accuracy(client, splits: list[int], rounds: int, local_epochs: int = 2) -> dict:
    from lepton_lab.ml.federated import federate

    out: dict = {}
    for name, make in models().items():
        fed, cen = [], []
        for seed in splits:
            Xtr, ytr, Xte, yte, parts = split(seed)
            # The same passes over the data (central accuracy is flat from 30 to 100 epochs here).
            cen.append(central(make(), Xtr, ytr, Xte, yte, epochs=rounds * local_epochs))
            r = federate(make(), loader=make_loader(Xtr, ytr, parts), sites=SITES, rounds=rounds, secure=True,
                         local_epochs=local_epochs,
                         eval_data=(Xte, yte), client=client, progress=False, name=f"bench-acc-{name}-{seed}")
            fed.append(accuracy(r.model, Xte, yte))
        f, c = statistics.mean(fed), statistics.mean(cen)
        out[name] = {"federated_secure": round(f, 4), "centralised": round(c, 4),
                     "gap_points": round(100 * (c - f), 2), "rounds": rounds, "local_epochs": local_epochs,
                     "optimizer": "sgd lr 0.1 momentum 0.9 batch 32", "splits": len(splits),
                     "per_split": [{"federated": round(a, 4), "centralised": round(b, 4)} for a, b in zip(fed, cen)],
                     "target": "gap <= 1 point"}
    return out


def bench_round_time(client, runs: int, rounds: int) -> dict:
    from lepton_lab.ml.federated import federate

    Xtr, ytr, Xte, yte, parts = split(0)
    loader = make_loader(Xtr, ytr, parts)
    make = models()["mlp"]
    per: dict[str, list[float]] = {"plain": [], "secure": []}
    first: dict[str, list[float]] = {"plain": [], "secure": []}
    for i in range(runs + 1):
        for mode in ("plain", "secure"):  # interleaved: drift on a 2-core machine hits both
            r = federate(make(), loader=loader, sites=SITES, rounds=rounds, secure=mode == "secure",
                         eval_data=(Xte, yte), client=client, progress=False, name=f"bench-time-{mode}-{i}")
            if i == 0:
                continue  # warm-up
            first[mode].append(r.history[0].seconds)
            per[mode].extend(h.seconds for h in r.history[1:])
    plain, secure = statistics.median(per["plain"]), statistics.median(per["secure"])
    return {"model": "mlp 30-16-1", "local_epochs": 1, "plain_round_ms": round(1000 * plain, 1),
            "secure_round_ms": round(1000 * secure, 1), "ratio": round(secure / plain, 3),
            "first_round_ms": {m: round(1000 * statistics.median(v), 1) for m, v in first.items()},
            "rounds_measured": len(per["secure"]), "runs": runs, "target": "ratio <= 1.5"}


def bench_dp(client, rounds: int) -> dict:
    from lepton_lab.ml.federated import DPConfig, federate

    Xtr, ytr, Xte, yte, parts = split(0)
    dp = DPConfig(clip=1.0, noise_multiplier=1.0, delta=1e-5)
    r = federate(models()["logreg"](), loader=make_loader(Xtr, ytr, parts), sites=SITES, rounds=rounds,
                 secure=True, dp=dp, eval_data=(Xte, yte), client=client, progress=False, name="bench-dp")
    return {"rounds": rounds, "clip": dp.clip, "noise_multiplier": dp.noise_multiplier, "delta": dp.delta,
            "epsilon": round(r.dp["epsilon"], 3), "epsilon_after_round": [round(h.epsilon, 3) for h in r.history],
            "accuracy": round(accuracy(r.model, Xte, yte), 4), "mode": "central DP, site level, RDP accountant"}


SCALE_SITES = (3, 6, 12, 24)
SCALE_SAMPLES = 256


def scale_profile(n: int) -> str:
    lines = ["profiles:", "  fedscale:", f"    description: one cloud worker and {n} edge sites", "    sites:",
             "      - {name: cloud, kind: cloud, workers: 1, threads: 1, memory: 512MiB}"]
    lines += [f"      - {{name: edge-{i:02d}, kind: edge, workers: 1, threads: 1, memory: 1GiB}}" for i in range(n)]
    return "\n".join(lines) + "\n"


def _plain_load(X, y):
    """The site's shard as tensors, on the site's worker (what federate's loader step makes)."""
    import torch

    return torch.as_tensor(X), torch.as_tensor(y)


def _plain_site_round(data, template, vector, cfg: dict, seed: int):
    """One site's FedAvg step with Lepton's own local training function: samples x update."""
    import copy

    from lepton_lab.ml.federated.local import _train_local, get_vector, set_vector

    X, y = data
    model = set_vector(copy.deepcopy(template), vector)
    _train_local(model, X, y, cfg, seed)
    return len(X) * (get_vector(model) - vector), len(X)


class PlainFedAvg:
    """FedAvg as a Dask user writes it: ``client.submit`` per site, numpy mean; one round per call.

    The shards are loaded onto their sites' workers and the model scattered there first,
    as ``federate`` does before its rounds.
    """

    def __init__(self, client, shards: dict, make):
        from lepton_lab.cluster.workers import on_site
        from lepton_lab.ml.federated.local import get_vector

        self.client, self.model = client, make()
        self.vector = get_vector(self.model)
        self.cfg = {"local_epochs": 1, "lr": 0.1, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
                    "strategy": "fedavg", "mu": 0.0, "kind": "binary"}
        self.data = {s: client.submit(_plain_load, *xy, resources=on_site(s), pure=False) for s, xy in shards.items()}
        client.gather(list(self.data.values()))
        holders = client.who_has(list(self.data.values()))
        self.where = {s: holders[f.key][0] for s, f in self.data.items()}
        self.templates = {s: client.scatter(self.model, workers=[self.where[s]], hash=False) for s in shards}
        self.rounds = 0
        self.futs: list = []

    def round(self) -> float:
        """One round; its seconds."""
        import numpy as np

        from lepton_lab.ml.federated.local import set_vector

        t = time.perf_counter()
        r, self.rounds = self.rounds, self.rounds + 1
        # As in a loop ``futs = [submit ...]; gather(futs)``: the last round's futures go when
        # the new list replaces them, after this round's tasks are submitted.
        self.futs = [self.client.submit(_plain_site_round, self.data[s], self.templates[s], self.vector, self.cfg,
                                        r * 7919 + i, workers=[self.where[s]], allow_other_workers=False, pure=False)
                     for i, s in enumerate(self.data)]
        out = self.client.gather(self.futs)
        total = np.sum([u for u, _ in out], axis=0)
        self.vector = self.vector + total / sum(n for _, n in out)
        set_vector(self.model, self.vector)
        return time.perf_counter() - t

    def close(self) -> None:
        for f in [*self.data.values(), *self.templates.values(), *self.futs]:
            f.release()


def _control(site: str, round_no: int) -> tuple[str, int]:
    """A control message's work on a site: nothing (what is timed is reaching every site)."""
    return site, round_no


async def _control_on_loop(site: str, round_no: int) -> tuple[str, int]:
    """The same as a coroutine: what a round's keys and unmasking calls are."""
    return site, round_no


def control_message_ms(client, sites: list[str], reps: int = 20) -> dict:
    """One control message to every site: Lepton's ``rpc`` (one broadcast, each worker bounding
    its own call) of a coroutine (run on the worker's event loop, as the keys and unmasking
    calls) and of a plain function (run in a thread, as the share call), against a plain
    ``Client.run`` of the same function on the same workers, rotated; medians in ms."""
    from lepton_lab.cluster.workers import site_workers
    from lepton_lab.ml.federated.calls import rpc

    where = {s: next(iter(site_workers(client, s))) for s in sites}
    modes = ["lepton_rpc", "lepton_rpc_thread", "plain_client_run"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(reps + 1):
        for mode in modes[i % 3:] + modes[:i % 3]:
            t = time.perf_counter()
            if mode == "plain_client_run":
                client.run(_control, "any", i, workers=list(where.values()))
            else:
                fn = _control_on_loop if mode == "lepton_rpc" else _control
                results, failed = rpc(client, fn, {s: (a, (s, i)) for s, a in where.items()}, 10.0)
                assert len(results) == len(sites) and not failed, failed
            if i:  # the first of each is a warm-up
                times[mode].append(time.perf_counter() - t)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {**{f"{m}_ms": round(1000 * v, 1) for m, v in med.items()},
            "ratio": round(med["lepton_rpc"] / med["plain_client_run"], 3),
            "thread_ratio": round(med["lepton_rpc_thread"] / med["plain_client_run"], 3), "reps": reps}


def bench_scaling(client, sites: list[str], runs: int, rounds: int) -> dict:
    import numpy as np
    from sklearn.datasets import make_classification

    from lepton_lab.ml.federated import federate

    X, y = make_classification(n_samples=SCALE_SAMPLES * len(sites), n_features=30, n_informative=10,
                               random_state=0)
    X, y = X.astype(np.float32), y.astype(np.float32)
    make = models()["mlp"]
    out: dict = {"model": "mlp 30-16-1", "samples_per_site": SCALE_SAMPLES, "local_epochs": 1,
                 "rounds_per_run": rounds, "runs": runs, "target": "secure / plain-Dask <= 1.3 at 12 sites",
                 "sites": {}}
    for n in SCALE_SITES:
        chosen = sites[:n]
        shards = {s: (X[i::len(sites)], y[i::len(sites)]) for i, s in enumerate(chosen)}

        def loader(site, shards=shards):
            return shards[site]

        # Each Lepton round is followed by a plain-Dask round of its own (``on_round``), so
        # the two alternate round by round: the machine's drift over seconds hits both alike.
        per: dict[str, list[float]] = {"lepton_plain": [], "secure": []}
        paired: dict[str, list[float]] = {m: [] for m in per}
        per_run: dict[str, list[float]] = {m: [] for m in per}
        phases: dict[str, list[float]] = {}
        first_secure = []
        for i in range(runs + 1):
            for mode in (["lepton_plain", "secure"] if i % 2 == 0 else ["secure", "lepton_plain"]):
                plain = PlainFedAvg(client, shards, make)
                plain_times: list[float] = []
                try:
                    r = federate(make(), loader=loader, sites=chosen, rounds=rounds, secure=mode == "secure",
                                 client=client, progress=False, name=f"bench-scale-{n}-{mode}-{i}",
                                 on_round=lambda rec, plain=plain, out=plain_times: out.append(plain.round()))
                finally:
                    plain.close()
                times = [h.seconds for h in r.history]
                if not i:
                    continue  # run 0 is the warm-up
                if mode == "secure":
                    first_secure.append(times[0])
                    for h in r.history[1:]:
                        for phase, sec in h.timings.items():
                            phases.setdefault(phase, []).append(sec)
                # Round 1 also loads and, secure, makes the keys; its plain partner is the first
                # round of a fresh plain run.
                per[mode].extend(times[1:])
                paired[mode].extend(plain_times[1:])
                per_run[mode].append(statistics.median(times[1:]) / statistics.median(plain_times[1:]))
        med = {m: statistics.median(v) for m, v in per.items()}
        plain_med = {m: statistics.median(v) for m, v in paired.items()}
        out["sites"][str(n)] = {
            # Each mode beside the plain-Dask rounds paired with its own rounds.
            "plain_dask_round_ms": round(1000 * plain_med["secure"], 1),
            "secure_round_ms": round(1000 * med["secure"], 1),
            "plain_dask_beside_lepton_plain_round_ms": round(1000 * plain_med["lepton_plain"], 1),
            "lepton_plain_round_ms": round(1000 * med["lepton_plain"], 1),
            "secure_over_plain_dask": round(med["secure"] / plain_med["secure"], 3),
            "secure_over_plain_dask_per_run": [round(x, 3) for x in per_run["secure"]],
            "lepton_plain_over_plain_dask": round(med["lepton_plain"] / plain_med["lepton_plain"], 3),
            "secure_phase_ms": {p: round(1000 * statistics.median(v), 1) for p, v in sorted(phases.items())},
            "first_secure_round_ms": round(1000 * statistics.median(first_secure), 1),
            "control_message": control_message_ms(client, chosen),
            "rounds_measured": len(per["secure"]),
        }
        print(f"scaling: {n} sites done ({out['sites'][str(n)]['secure_over_plain_dask']} secure / plain-Dask)",
              file=sys.stderr, flush=True)
    twelve = out["sites"].get("12")
    out["meets_target"] = bool(twelve and twelve["secure_over_plain_dask"] <= 1.3)
    return out


PARTS = ("accuracy", "round_time", "dp", "scaling")


def print_table(results: dict) -> None:
    print(f"{'measure':44} {'value':>12}  target")
    for name, a in results.get("accuracy", {}).items():
        print(f"{'accuracy ' + name + ' centralised':44} {a['centralised']:>12.4f}")
        print(f"{'accuracy ' + name + ' federated (secure, 30 rounds)':44} {a['federated_secure']:>12.4f}")
        print(f"{'  gap, points (' + str(a['splits']) + ' splits)':44} {a['gap_points']:>12.2f}  <= 1")
    if "round_time" in results:
        rt = results["round_time"]
        print(f"{'round time plain FedAvg, ms (median)':44} {rt['plain_round_ms']:>12.1f}")
        print(f"{'round time secure aggregation, ms (median)':44} {rt['secure_round_ms']:>12.1f}")
        print(f"{'  ratio secure / plain':44} {rt['ratio']:>12.3f}  <= 1.5")
        print(f"{'first round (with key setup), ms secure':44} {rt['first_round_ms']['secure']:>12.1f}")
    if "dp" in results:
        dp = results["dp"]
        print(f"{'DP ε at δ=1e-5 after 30 rounds (z=1, C=1)':44} {dp['epsilon']:>12.3f}")
        print(f"{'DP accuracy':44} {dp['accuracy']:>12.4f}")
    for n, r in results.get("scaling", {}).get("sites", {}).items():
        phases = ", ".join(f"{p} {v}" for p, v in r["secure_phase_ms"].items())
        print(f"{n + ' sites: plain-Dask / secure, ms':44} {r['plain_dask_round_ms']:>6} / {r['secure_round_ms']}")
        print(f"{'  plain-Dask / Lepton without secure agg., ms':44} "
              f"{r['plain_dask_beside_lepton_plain_round_ms']:>6} / {r['lepton_plain_round_ms']}  "
              f"({r['lepton_plain_over_plain_dask']}x)")
        print(f"{'  secure / plain-Dask (per run)':44} {r['secure_over_plain_dask']:>12.3f}  "
              f"{'<= 1.3 ' if n == '12' else ''}{r['secure_over_plain_dask_per_run']}")
        print(f"{'  secure phases, ms (median)':44} {phases}")
        cm = r["control_message"]
        print(f"{'  a control message to every site, ms':44} Lepton rpc {cm['lepton_rpc_ms']} "
              f"(in a thread {cm['lepton_rpc_thread_ms']}) / plain Client.run {cm['plain_client_run_ms']} "
              f"({cm['ratio']}x, {cm['thread_ratio']}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one split, fewer timing runs")
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {', '.join(PARTS)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "federated.json"))
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import lepton_lab

    tmp = tempfile.mkdtemp(prefix="lepton-fedbench-")
    profiles = Path(tmp) / "profiles.yaml"
    os.environ["LEPTON_PROFILES"] = str(profiles)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    results: dict = {}
    if {"accuracy", "round_time", "dp"} & set(parts):
        profiles.write_text(PROFILES)
        handle = lepton_lab.up("fedbench", name="fedbench")
        try:
            client = handle.client
            splits = [0] if args.quick else [0, 1, 2, 3, 4]
            if "accuracy" in parts:
                results["accuracy"] = bench_accuracy(client, splits, rounds=30)
            if "round_time" in parts:
                results["round_time"] = bench_round_time(client, runs=2 if args.quick else 5,
                                                         rounds=10 if args.quick else 15)
            if "dp" in parts:
                results["dp"] = bench_dp(client, rounds=30)
        finally:
            lepton_lab.down("fedbench")
    if "scaling" in parts:
        from distributed import Client

        from lepton_lab.cluster.launcher import ManagedCluster
        from lepton_lab.cluster.profiles import get_profile

        profiles.write_text(scale_profile(max(SCALE_SITES)))
        # 25 worker processes on a small machine may take longer than up()'s wait to join.
        managed = ManagedCluster.start(get_profile("fedscale"), name="fedscale", timeout=600)
        client = Client(managed.address)
        try:
            sites = [f"edge-{i:02d}" for i in range(max(SCALE_SITES))]
            results["scaling"] = bench_scaling(client, sites, runs=2 if args.quick else 3,
                                               rounds=5 if args.quick else 8)
        finally:
            client.close()
            managed.close()
    results["machine"] = {"cpus": os.cpu_count(), "quick": args.quick, "seconds": round(time.perf_counter() - t0, 1),
                          "load_avg_1min_at_start": round(load, 2),
                          "load_avg_1min_at_end": round(os.getloadavg()[0], 2)}
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
