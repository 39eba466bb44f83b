"""ML benchmarks: compression ratios against plain PyTorch, measured in one process.

    .venv/bin/python bench/ml.py [--quick] [--only int8,prune_int8]

Each section is a function returning a dict of numbers plus the targets they
are checked against; ``main`` runs the sections, prints one table and merges
the results into ``bench/results/ml.json``. Latencies are medians of
interleaved runs (candidates take turns in one process), because on these
machines medians drift by up to 50 % between process launches.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from results_io import write_results
from torch import nn

from lepton_lab.ml.compress import EvalData, compress, interleaved_latency, state_dict_bytes

RESULTS = Path(__file__).parent / "results" / "ml.json"
SIZES = (784, 1024, 1024, 10)


# --------------------------------------------------------------------------- shared fixtures


@functools.cache
def digits_784() -> EvalData:
    """sklearn's 8x8 digits upsampled to 28x28 = 784 features (an MNIST-shaped input)."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    images = zoom(X.reshape(-1, 8, 8) / 16, (1, 3.5, 3.5), order=1)
    X = images.reshape(len(X), -1).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y)
    return EvalData(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)


def mlp(sizes=SIZES) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@functools.cache
def trained_mlp(epochs: int) -> nn.Sequential:
    """The 784-1024-1024-10 MLP after a few epochs of Adam on ``digits_784``."""
    torch.manual_seed(0)
    data = digits_784()
    model = mlp()
    X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(X)).split(64):
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, data: EvalData) -> float:
    with torch.inference_mode():
        predicted = model(torch.from_numpy(data.X_test)).argmax(1).numpy()
    return float((predicted == data.y_test).mean() * 100)


def plain_int8(model: nn.Module) -> nn.Module:
    """What a user writes without Lepton: torch.ao dynamic quantization, x86 engine."""
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def latencies_ms(models: dict[str, nn.Module], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per call of each model, the models taking turns, per batch size and threads.

    Keys look like ``"batch64"`` (torch's default threads) and ``"batch64_1thread"``: when
    other jobs share the 2 cores, two OpenMP threads wait for each other at every barrier
    and int8 kernels suffer most, so one thread is measured too.
    """
    default = torch.get_num_threads()
    out = {}
    for threads in dict.fromkeys((default, 1)):
        torch.set_num_threads(threads)
        try:
            for batch in (1, 64):
                X = digits_784().X_test
                x = torch.from_numpy(X[np.resize(np.arange(len(X)), batch)])
                with torch.inference_mode():
                    seconds = interleaved_latency([lambda m=m: m(x) for m in models.values()],
                                                  rounds=rounds, sample_seconds=0.02)
                key = f"batch{batch}" + ("" if threads == default else f"_{threads}thread")
                out[key] = {name: s * 1e3 for name, s in zip(models, seconds)}
        finally:
            torch.set_num_threads(default)
    return out


def speedups(latency: dict[str, dict[str, float]], base: str, name: str) -> dict[str, float]:
    """``speedup_<key>_<name>``: how many times faster ``name`` is than ``base``."""
    return {f"speedup_{key}_{name}": ms[base] / ms[name] for key, ms in latency.items()}


def settings(quick: bool) -> dict[str, int]:
    return {"epochs": 3 if quick else 15, "rounds": 9 if quick else 31}


# --------------------------------------------------------------------------- sections


def bench_int8(quick: bool = False) -> dict[str, Any]:
    """int8 dynamic quantization of the 784-1024-1024-10 MLP: plain torch.ao vs compress()."""
    opts = settings(quick)
    data = digits_784()
    fp32 = trained_mlp(opts["epochs"])

    start = time.perf_counter()
    plain = plain_int8(fp32)
    plain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours, report = compress(fp32, data=data, quantize="int8", progress=False)
    compress_seconds = time.perf_counter() - start

    models = {"fp32": fp32, "plain": plain, "compress": ours}
    latency = latencies_ms(models, opts["rounds"])
    sizes = {name: state_dict_bytes(m) for name, m in models.items()}
    acc = {name: accuracy(m, data) for name, m in models.items()}
    return {
        "model": "MLP " + "-".join(map(str, SIZES)),
        "test_samples": len(data.y_test),
        "backend": report.backend,
        "bytes": sizes,
        "accuracy": acc,
        "latency_ms": latency,
        "size_ratio_plain": sizes["fp32"] / sizes["plain"],
        "size_ratio_compress": sizes["fp32"] / sizes["compress"],
        **speedups(latency, "fp32", "plain"),
        **speedups(latency, "fp32", "compress"),
        "accuracy_change_points": acc["compress"] - acc["fp32"],
        "quantize_seconds_plain": plain_seconds,
        # compress() also evaluates and times both models; this is the wrapper's cost.
        "compress_seconds": compress_seconds,
        "report": report.to_dict(),
        "targets": {
            "size_ratio_compress": (">=", 3.9),
            "speedup_batch64_compress": (">=", 3.0),
            "speedup_batch1_compress": (">=", 1.5),
            "speedup_batch64_1thread_compress": (">=", 3.0),
            "speedup_batch1_1thread_compress": (">=", 1.5),
            "accuracy_change_points": (">=", -1.0),
        },
    }


def bench_prune_int8(quick: bool = False) -> dict[str, Any]:
    """Structured pruning (half the hidden neurons, fine-tuned) then int8, via compress()."""
    opts = settings(quick)
    data = digits_784()
    fp32 = trained_mlp(opts["epochs"])
    start = time.perf_counter()
    small, report = compress(fp32, data=data, prune=0.5, quantize="int8", progress=False)
    seconds = time.perf_counter() - start
    latency = latencies_ms({"fp32": fp32, "pruned_int8": small}, opts["rounds"])
    return {
        "model": "MLP " + "-".join(map(str, SIZES)),
        "test_samples": len(data.y_test),
        "steps": report.steps,
        "widths_after": report.details.get("widths_after"),
        "bytes": {"fp32": report.before.size_bytes, "pruned_int8": report.after.size_bytes},
        "accuracy": {"fp32": report.before.metric, "pruned_int8": report.after.metric},
        "size_ratio": report.size_ratio,
        "accuracy_change_points": report.metric_change,
        "latency_ms": latency,
        **speedups(latency, "fp32", "pruned_int8"),
        "compress_seconds": seconds,
        "report": report.to_dict(),
        "targets": {
            "size_ratio": (">=", 8.0),
            "accuracy_change_points": (">=", -1.0),
        },
    }


#: Sections by name, in the order they run; other benchmarks add theirs here.
SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "int8": bench_int8,
    "prune_int8": bench_prune_int8,
}


# --------------------------------------------------------------------------- runner


def check(results: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """(name, value, target, met) for every target a section declared."""
    rows = []
    for name, (op, bound) in results.get("targets", {}).items():
        value = results.get(name)
        if value is None:  # e.g. no 1-thread run when torch already uses one thread
            continue
        met = value >= bound if op == ">=" else value <= bound
        rows.append((name, value, f"{op} {bound:g}", met))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and timing rounds")
    parser.add_argument("--only", default="", help="comma-separated sections: "
                        + ", ".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SECTIONS)
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")

    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out["machine"] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg(), "quick": args.quick,
    }
    sections = out.setdefault("sections", {})
    all_met = True
    print(f"{'section':<12} {'quantity':<34} {'value':>9}  {'target':<8} ok")
    for name in names:
        start = time.perf_counter()
        results = SECTIONS[name](args.quick)
        results["seconds"] = time.perf_counter() - start
        sections[name] = results
        for quantity, value, target, met in check(results):
            all_met &= met
            print(f"{name:<12} {quantity:<34} {value:>9.2f}  {target:<8} {'yes' if met else 'NO'}")
        for quantity, value in results.items():
            if quantity.startswith(("speedup_", "size_ratio")) or quantity == "compress_seconds":
                if quantity not in results.get("targets", {}):
                    print(f"{name:<12} {quantity:<34} {value:>9.2f}")
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    return write_results(args.out, out, all_met=all_met, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
