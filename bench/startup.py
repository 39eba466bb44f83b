"""Interactive start-up: ``%load_ext lepton_lab`` against a bare IPython shell, in one run.

    python bench/startup.py [--runs 15] [--out bench/results/startup.json]

A: ``ipython -c 'pass'``; B: ``ipython -c '%load_ext lepton_lab'``, each a fresh process
timed from start to exit, with the same fresh ``IPYTHONDIR``. A and B alternate which
goes first in each pair; the median of B - A over the pairs is the cost of loading
the extension (target <= 0.15 s), quoted with its spread (min-max).
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
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "startup.json"
BARE = "pass"
EXTENSION = "%load_ext lepton_lab"


def timed(code: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "-c", code], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench(runs: int) -> dict:
    ipython_dir = tempfile.mkdtemp(prefix="lepton-bench-ipython-")
    env = {**os.environ, "IPYTHONDIR": ipython_dir}
    try:
        timed(BARE, env), timed(EXTENSION, env)  # profile directory, history database, page cache
        bare, ext = [], []
        for i in range(runs):
            if i % 2 == 0:
                bare.append(timed(BARE, env))
                ext.append(timed(EXTENSION, env))
            else:
                ext.append(timed(EXTENSION, env))
                bare.append(timed(BARE, env))
    finally:
        shutil.rmtree(ipython_dir, ignore_errors=True)
    extra = [e - b for b, e in zip(bare, ext)]
    return {"compares": "ipython -c '%load_ext lepton_lab' vs ipython -c 'pass', fresh processes",
            "runs": runs, "load_average": round(os.getloadavg()[0], 2),
            "bare_s": round(statistics.median(bare), 3), "bare_spread_s": [round(min(bare), 3), round(max(bare), 3)],
            "load_ext_s": round(statistics.median(ext), 3),
            "load_ext_spread_s": [round(min(ext), 3), round(max(ext), 3)],
            "extra_s": round(statistics.median(extra), 3),
            "extra_spread_s": [round(min(extra), 3), round(max(extra), 3)],
            "target": "extra <= 0.15 s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 runs")
    parser.add_argument("--out", default=str(RESULTS))
    a = parser.parse_args()
    r = bench(5 if a.quick else a.runs)
    print(f"bare ipython:          {r['bare_s']:.3f} s  [{r['bare_spread_s'][0]:.3f}-{r['bare_spread_s'][1]:.3f}]")
    print(f"%load_ext lepton_lab:  {r['load_ext_s']:.3f} s  [{r['load_ext_spread_s'][0]:.3f}-"
          f"{r['load_ext_spread_s'][1]:.3f}]")
    print(f"extra (median of {r['runs']} alternating pairs): {r['extra_s']:.3f} s "
          f"[{r['extra_spread_s'][0]:.3f}-{r['extra_spread_s'][1]:.3f}] (target <= 0.15 s); "
          f"load average {r['load_average']}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
