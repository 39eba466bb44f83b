"""``GET /api/status`` with 16 clusters running vs none, schedulers out of the server or in it:

    .venv/bin/python bench/status_clusters.py [--quick] [--clusters 16] [--workers 0] [--blocks 12] [--strict]

Four ``jupyter server`` subprocesses with the Lepton extension (``lepton_lab.testing.start_jupyter``),
all up at once: for each way of running schedulers, one server with no cluster and one with
``--clusters`` TLS clusters created through its REST API (``--workers`` cloud workers each, 1 thread,
512 MiB; none by default, so the bring-up of 32 clusters stays within minutes on 2 cores):

* process (``LEPTON_SCHEDULERS=process``, the default): each cluster's scheduler and worker
  are processes of their own, the scheduler in the process the server keeps started ahead;
* in-process: the schedulers run inside the server's process (on distributed's loop thread),
  and so do the workers' nannies.

Each block measures, for each way of running schedulers, the server with no cluster and the
one with clusters in turns: 5 bursts of 100 requests at once to each (p50 and p99, as
``bench/server.py`` loads the server), the two alternating burst by burst, then 250 lone
requests to each, alternating request by request, so the machine's drift falls on both.
The ratios 16 clusters / none are taken on the percentiles of all blocks' requests together
(12 blocks by default: 6,000 burst and 3,000 lone requests to each server), since one
block's p99 rests on its 5 slowest requests of 500 (a lone request's on its 3 slowest of
250), and one block's ratio swings from about 0.4 to 2.6 on a 2-core machine; the median
and range of the blocks' own ratios are reported beside them as their spread.
Target: <= 1.1 x for schedulers out of the server. The clusters' bring-up (POST to 201,
its workers joined) is timed too, the two ways alternating, and what every server and
the processes under it spend while nothing is asked of them (CPU over ``IDLE_SECONDS``,
as a share of one core), and the memory each of them holds alone (unique set size:
pages shared with other processes are left out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rest_load import CONCURRENCY, KeepAliveClient, pct, spread  # noqa: E402
from results_io import write_results  # noqa: E402

TARGET = 1.1
PATH = "/api/status"
MODES = ("process", "in-process")
ROUNDS = 5
SINGLES = 250
IDLE_SECONDS = 10.0


def _cpu_seconds(processes) -> float:
    import psutil

    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _uss_mib(processes) -> float:
    """Memory only these processes hold (unique set size, summed), MiB."""
    import psutil

    total = 0
    for p in processes:
        try:
            total += p.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return round(total / 2**20, 1)


def _at_rest(servers: dict) -> tuple[dict[str, int], dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per server, while nothing is asked of it: how many processes run under it; the % of one core
    its own process and those processes spend over ``IDLE_SECONDS``; and the memory each holds (USS)."""
    import psutil

    tree = {}
    for key, server in servers.items():
        main = psutil.Process(server.process.pid)
        tree[key] = (main, main.children(recursive=True))
    before = {k: (_cpu_seconds([m]), _cpu_seconds(kids)) for k, (m, kids) in tree.items()}
    time.sleep(IDLE_SECONDS)
    after = {k: (_cpu_seconds([m]), _cpu_seconds(kids)) for k, (m, kids) in tree.items()}

    def share(key, i: int) -> float:
        return round(100 * (after[key][i] - before[key][i]) / IDLE_SECONDS, 1)

    children = {f"{mode}-{n}": len(kids) for (mode, n), (_, kids) in tree.items()}
    cpu = {f"{mode}-{n}": {"server_pct": share((mode, n), 0), "under_it_pct": share((mode, n), 1)}
           for (mode, n) in tree}
    memory = {f"{mode}-{n}": {"server_mib": _uss_mib([main]), "under_it_mib": _uss_mib(kids)}
              for (mode, n), (main, kids) in tree.items()}
    return children, cpu, memory


async def _measure_pair(ports: tuple[int, int], tokens: tuple[str, str], flip: bool) -> list[dict[str, list[float]]]:
    """Latencies (ms) of two servers measured in turn, so the machine's drift falls on both.

    ``ROUNDS`` bursts of 100 requests at once to each, the servers taking turns burst by burst
    (who goes first flips each round), then ``SINGLES`` lone requests to each, in turns request
    by request. Returns, per server, its burst and lone latencies.
    """
    clients = [KeepAliveClient(port) for port in ports]
    got: list[dict[str, list[float]]] = [{"loaded": [], "single": []} for _ in ports]

    async def one(i: int) -> float:
        status, dt = await clients[i].get(PATH, tokens[i])
        if status != 200:
            raise RuntimeError(f"GET {PATH} on port {ports[i]}: {status}")
        return 1000 * dt

    def turns(r: int) -> tuple[int, int]:
        return (0, 1) if (r % 2 == 0) != flip else (1, 0)

    try:
        for r in range(ROUNDS):
            for i in turns(r):
                got[i]["loaded"] += await asyncio.gather(*(one(i) for _ in range(CONCURRENCY)))
        for r in range(SINGLES):
            for i in turns(r):
                got[i]["single"].append(await one(i))
    finally:
        for client in clients:
            await client.close()
    return got


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _percentiles(samples: dict[str, list[float]]) -> dict[str, float]:
    return {"loaded_p50": pct(samples["loaded"], 50), "loaded_p99": pct(samples["loaded"], 99),
            "single_p50": pct(samples["single"], 50), "single_p99": pct(samples["single"], 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 clusters, 3 blocks")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="cloud workers per cluster")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "status_clusters.json")
    args = parser.parse_args()
    n_clusters, blocks = (4, 3) if args.quick else (args.clusters, args.blocks)

    from lepton_lab.security.identity import local_user
    from lepton_lab.testing import start_jupyter

    tmp = Path(tempfile.mkdtemp(prefix="lepton-statusbench-"))
    policy = f"version: 1\nteams: [bench]\nmembers:\n  {local_user()}: {{bench: admin}}\n"
    servers = {}
    try:
        for mode in MODES:
            env = {"LEPTON_SCHEDULERS": mode}
            for n in (0, n_clusters):
                servers[(mode, n)] = start_jupyter(tmp / f"{mode}-{n}", policy, app="jupyter_server", env=env)
        bring_up: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i in range(n_clusters):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                server = servers[(mode, n_clusters)]
                t = time.perf_counter()
                code, c = server.api("lepton/api", "clusters", method="POST",
                                     body={"team": "bench", "workers": {"cloud": args.workers, "edge": 0},
                                           "threads": 1, "memory": "512MiB"}, timeout=300)
                if code != 201:
                    raise RuntimeError(f"creating cluster {i + 1} ({mode}): {code} {c}")
                bring_up[mode].append(time.perf_counter() - t)
        children, idle, memory = _at_rest(servers)

        # Per block, each mode's pair (none, clusters) in turn, the mode order alternating.
        per_block: list[dict] = []
        for b in range(blocks):
            got = {}
            for mode in (MODES if b % 2 == 0 else MODES[::-1]):
                none_server, many_server = servers[(mode, 0)], servers[(mode, n_clusters)]
                none, many = asyncio.run(_measure_pair(
                    (_port(none_server), _port(many_server)), (none_server.token, many_server.token),
                    flip=bool(b // 2 % 2)))
                got[(mode, 0)], got[(mode, n_clusters)] = none, many
            per_block.append(got)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    metrics = ("loaded_p50", "loaded_p99", "single_p50", "single_p99")
    results: dict = {"compares": f"GET {PATH} on a Lepton server with {n_clusters} clusters running vs one with "
                                 "none, the two taking turns burst by burst and request by request; schedulers "
                                 "as processes of their own vs in the server's process",
                     "clusters": n_clusters, "workers_per_cluster": args.workers, "blocks": blocks,
                     "requests_per_server": {"loaded": blocks * ROUNDS * CONCURRENCY, "single": blocks * SINGLES},
                     "target": f"<= {TARGET} (process), on the percentiles of all blocks' requests",
                     "cpus": os.cpu_count(), "child_processes": children, "idle_cpu_pct_of_one_core": idle,
                     "memory_uss_mib": memory, "modes": {}}
    print(f"GET {PATH}: {n_clusters} clusters running / none over all {blocks} blocks' requests "
          f"({blocks * ROUNDS * CONCURRENCY} in bursts, {blocks * SINGLES} lone, to each server), "
          "then the median [min-max] of the blocks' own ratios")
    print(f"  {'':12}" + "".join(f"{m:>24}" for m in metrics))
    print(f"  {'':12}" + "".join(f"{'all  blocks [range]':>24}" for _ in metrics))
    all_met = True
    for mode in MODES:
        pooled = {n: _percentiles({kind: [v for blk in per_block for v in blk[(mode, n)][kind]]
                                   for kind in ("loaded", "single")}) for n in (0, n_clusters)}
        blockwise = [{n: _percentiles(blk[(mode, n)]) for n in (0, n_clusters)} for blk in per_block]
        ratios = {m: round(pooled[n_clusters][m] / pooled[0][m], 3) for m in metrics}
        by_block = {m: spread([blk[n_clusters][m] / blk[0][m] for blk in blockwise]) for m in metrics}
        absolute = {f"{m}_ms": {"none": round(pooled[0][m], 2), "clusters": round(pooled[n_clusters][m], 2)}
                    for m in metrics}
        worst = max(ratios.values())
        met = worst <= TARGET
        if mode == "process":
            all_met = met
        up = bring_up[mode]
        results["modes"][mode] = {"ratios": ratios, "ratios_by_block": by_block, "latency": absolute,
                                  "worst_ratio": worst, "meets_target": met if mode == "process" else None,
                                  "bring_up_s": spread(up) if up else None}
        print(f"  {mode:12}" + "".join(
            f"{ratios[m]:>6.2f} {by_block[m]['median']:.2f} [{by_block[m]['min']:.2f}-{by_block[m]['max']:.2f}]"
            for m in metrics))
        print(f"  {'':12}" + "".join(
            f"{absolute[m + '_ms']['none']:>10.2f} -> {absolute[m + '_ms']['clusters']:.2f} ms" for m in metrics))
    for mode in MODES:
        up = bring_up[mode]
        if up:
            print(f"  bring-up of one cluster ({mode}): median {statistics.median(up):.2f} s "
                  f"[{min(up):.2f}-{max(up):.2f}] over {len(up)}")
    print(f"  processes under each server: {children}")
    print(f"  idle, % of one core over {IDLE_SECONDS:g} s (server / the processes under it): "
          + ", ".join(f"{k} {v['server_pct']} / {v['under_it_pct']}" for k, v in idle.items()))
    print("  memory held, MiB (unique set size; server / the processes under it): "
          + ", ".join(f"{k} {v['server_mib']} / {v['under_it_mib']}" for k, v in memory.items()))
    print(f"  target: process <= {TARGET} x on every measure")
    return write_results(args.out, results, all_met=all_met, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
