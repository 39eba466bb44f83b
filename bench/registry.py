"""Registry benchmarks through the public API, each against plain libraries doing the same work.

    python bench/registry.py [--size-mb 256] [--repeats 5] [--quick] [--out bench/results/registry.json]

A PyTorch model of ``--size-mb`` MB (Linear layers 2048 wide) is published and loaded.
Every measurement runs in a fresh Python process, so its peak memory is its own; A and B
alternate order from one repeat to the next, and each figure is a median with its
spread (min-max). Peak memory is the process's peak resident set above what it held
just before the call.

1. load: ``lepton_lab.load`` (signature, every GCM tag, SHA-256, rebuild) vs plain
   ``torch.load`` of the same state_dict from an unencrypted file + building the
   module + ``load_state_dict`` (targets: time and peak memory <= 1.1x);
2. publish: ``lepton_lab.publish`` vs ``Registry.publish`` of the same module: time
   (target <= 1.1x) and peak memory beyond the model (target <= 1.1x the model's size);
3. publish + load through the public API vs a fair plain baseline: ``torch.save``
   streamed through AES-GCM (the registry's chunk size) and SHA-256 (on a second
   thread, as the registry does) into a file with the registry's fsyncs (artifact,
   manifest, signature, staging directory, rename, index), then read back chunk by
   chunk, decrypted, hashed, ``torch.load`` + module built on the meta device with
   ``load_state_dict(assign=True)`` (target: the registry at >= 80 % of its speed).
Every loaded model's output on a fixed input is compared with the original's.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "registry.json"
WIDTH = 2048
#: A team of the policy a fresh LEPTON_HOME starts with (its user administers medical and finance).
TEAM = "medical"
CHUNK = 4 * 1024 * 1024

try:
    import torch

    class Wide(torch.nn.Module):
        """Layers of ``width`` x ``width``: a model of a chosen size with nothing else in it."""

        def __init__(self, width: int = WIDTH, depth: int = 4):
            super().__init__()
            self.init_kwargs = {"width": width, "depth": depth}
            self.layers = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])

        def forward(self, x):
            return self.layers(x)

    from lepton_lab.registry import allow_builder

    allow_builder(Wide)  # each child process loads what another published: it names its class
except ImportError:  # the parent process needs no torch
    torch = None


# ------------------------------------------------------------------ in a child process


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fingerprint(model) -> str:
    torch.manual_seed(1)
    x = torch.randn(4, model.init_kwargs["width"])
    with torch.no_grad():
        return hashlib.sha256(model(x).numpy().tobytes()).hexdigest()[:16]


def _model(depth: int, width: int = WIDTH) -> "Wide":
    torch.manual_seed(0)
    return Wide(width, depth).eval()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PlainSealer:
    """AES-GCM per chunk into a file, SHA-256 of the plaintext on a second thread."""

    def __init__(self, f):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = AESGCM.generate_key(bit_length=256)
        self.aead, self.f = AESGCM(self.key), f
        self.prefix, self.index, self.pending = secrets.token_bytes(8), 0, bytearray()
        self.sha, self.pool, self.hashing = hashlib.sha256(), ThreadPoolExecutor(1), None
        self.size = 0

    def flush(self) -> None:
        """Chunks are written as they fill."""

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        pos = 0
        if self.pending:
            pos = min(CHUNK - len(self.pending), len(view))
            self.pending += view[:pos]
            if len(self.pending) == CHUNK and pos < len(view):
                self._seal(bytes(self.pending), final=False)
                self.pending = bytearray()
        while len(view) - pos > CHUNK:
            self._seal(view[pos:pos + CHUNK], final=False)
            pos += CHUNK
        self.pending += view[pos:]
        if self.hashing:
            self.hashing.result()  # the caller may reuse its buffer
        return len(view)

    def _seal(self, chunk, *, final: bool) -> None:
        if self.hashing:
            self.hashing.result()
        self.hashing = self.pool.submit(self.sha.update, chunk)
        nonce = self.prefix + self.index.to_bytes(4, "big")
        self.f.write(self.aead.encrypt(nonce, chunk, self.index.to_bytes(8, "big") + bytes([final])))
        self.index += 1
        self.size += len(chunk)

    def close(self) -> dict:
        self._seal(bytes(self.pending), final=True)
        self.hashing.result()
        self.pool.shutdown()
        return {"key": self.key.hex(), "prefix": self.prefix.hex(), "size": self.size,
                "sha256": self.sha.hexdigest()}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def baseline_publish(model, root: Path) -> Path:
    """``torch.save`` through AES-GCM + SHA-256 into a file, with the registry's fsyncs."""
    staging = root / f"staging-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    with open(staging / "artifact.enc", "xb") as f:
        sealer = _PlainSealer(f)
        torch.save(model.state_dict(), sealer)
        facts = sealer.close()
        f.flush()
        os.fsync(f.fileno())
    meta = json.dumps({**facts, "kwargs": model.init_kwargs}).encode()
    _write_synced(staging / "manifest.json", meta)
    _write_synced(staging / "manifest.sig", hashlib.sha256(meta).digest())
    _fsync_dir(staging)
    final = root / f"v-{secrets.token_hex(4)}"
    os.rename(staging, final)
    _fsync_dir(root)
    tmp = root / f".index.{secrets.token_hex(4)}"
    _write_synced(tmp, json.dumps({"latest": final.name}).encode())
    os.replace(tmp, root / "index.json")
    _fsync_dir(root)
    return final


class _Reader(io.RawIOBase):
    """A file over a buffer without copying it."""

    def __init__(self, buffer):
        self.view, self.pos = memoryview(buffer), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        n = max(0, min(len(b), len(self.view) - self.pos))
        memoryview(b).cast("B")[:n] = self.view[self.pos:self.pos + n]
        self.pos += n
        return n

    def seek(self, offset, whence=0):
        self.pos = offset + (0, self.pos, len(self.view))[whence]
        return self.pos

    def tell(self):
        return self.pos


def baseline_load(version: Path):
    """Read back, decrypt and hash chunk by chunk, ``torch.load``, build on meta, assign."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    meta = json.loads((version / "manifest.json").read_bytes())
    aead, prefix = AESGCM(bytes.fromhex(meta["key"])), bytes.fromhex(meta["prefix"])
    buffer, view = bytearray(meta["size"]), None
    view = memoryview(buffer)
    sha, pool, hashing = hashlib.sha256(), ThreadPoolExecutor(1), None
    n_chunks = max(1, -(-meta["size"] // CHUNK))
    with open(version / "artifact.enc", "rb") as f:
        for i in range(n_chunks):
            block = f.read(CHUNK + 16)
            out = view[i * CHUNK: i * CHUNK + len(block) - 16]
            aead.decrypt_into(prefix + i.to_bytes(4, "big"), block,
                              i.to_bytes(8, "big") + bytes([i == n_chunks - 1]), out)
            if hashing:
                hashing.result()
            hashing = pool.submit(sha.update, out)
    hashing.result()
    pool.shutdown()
    if sha.hexdigest() != meta["sha256"]:
        raise ValueError("digest mismatch")
    state = torch.load(_Reader(buffer), map_location="cpu", weights_only=True)
    del view, buffer
    with torch.device("meta"):
        model = Wide(**meta["kwargs"])
    model.load_state_dict(state, assign=True)
    return model.eval()


def child(kind: str, work: Path, depth: int) -> dict:
    """One measurement in this process: seconds, peak memory above the start, the output's fingerprint."""
    os.environ["LEPTON_HOME"] = str(work / "home")
    os.environ["LEPTON_TRANSPORT"] = "embedded"
    import lepton_lab
    from lepton_lab import config
    from lepton_lab.registry import Registry
    from lepton_lab.security.identity import local_user
    from lepton_lab.security.vault import KeyRing

    registry = Registry(config.registry_path(), KeyRing(config.keys_path() / "vault"))

    def run(kind: str, model, width: int, depth: int, tag: str):
        """The measured call; run once on a tiny model first, so imports are paid alike."""
        if kind == "load_plain":
            state = torch.load(work / f"plain-{tag}.pt", map_location="cpu", weights_only=True)
            loaded = Wide(width, depth)
            loaded.load_state_dict(state)
            return loaded.eval()
        if kind == "load_lepton":
            return lepton_lab.load(f"{tag}@1", team=TEAM)
        if kind == "publish_lepton":
            return lepton_lab.publish(model, f"{tag}-api", team=TEAM) and None
        if kind == "publish_registry":
            return registry.publish(model, name=f"{tag}-registry", team=TEAM, user=local_user()) and None
        if kind == "roundtrip_lepton":
            manifest = lepton_lab.publish(model, f"{tag}-round", team=TEAM)
            return lepton_lab.load(f"{tag}-round@{manifest['version']}", team=TEAM)
        if kind == "roundtrip_baseline":
            return baseline_load(baseline_publish(model, work / f"plain-store-{tag}"))
        raise SystemExit(f"unknown kind {kind!r}")

    if kind == "prepare":
        for tag, model in (("tiny", _model(1, 8)), ("wide", _model(depth))):
            torch.save(model.state_dict(), work / f"plain-{tag}.pt")
            lepton_lab.publish(model, tag, team=TEAM)
        return {"fingerprint": _fingerprint(model),
                "model_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values())}
    run(kind, _model(1, 8), 8, 1, "tiny")
    model = _model(depth) if kind.startswith(("publish", "roundtrip")) else None
    gc.collect()
    before, peak_before = _rss(), _peak()
    start = time.perf_counter()
    loaded = run(kind, model, WIDTH, depth, "wide")
    seconds = time.perf_counter() - start
    peak = _peak()
    return {"seconds": seconds, "peak_extra": peak - before, "peak_raised": peak > peak_before,
            "fingerprint": _fingerprint(loaded) if loaded is not None else None}


# ------------------------------------------------------------------ in the parent


def run_child(kind: str, work: Path, depth: int, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), "--depth", str(depth)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict], key: str, scale: float = 1.0) -> dict:
    xs = [r[key] * scale for r in runs]
    return {"median": round(statistics.median(xs), 3), "spread": [round(min(xs), 3), round(max(xs), 3)]}


def pair(a: str, b: str, work: Path, depth: int, repeats: int, env: dict | None = None) -> tuple[list, list]:
    """``repeats`` runs of each, alternating which goes first."""
    ra, rb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ra.append(run_child(a, work, depth, env))
            rb.append(run_child(b, work, depth, env))
        else:
            rb.append(run_child(b, work, depth, env))
            ra.append(run_child(a, work, depth, env))
    return ra, rb


def bench(size_mb: int, repeats: int, env: dict | None = None) -> dict:
    depth = max(1, round(size_mb * 1e6 / (4 * (WIDTH * WIDTH + WIDTH))))
    work = Path(tempfile.mkdtemp(prefix="lepton-bench-registry-"))
    try:
        prepared = run_child("prepare", work, depth, env)
        model_mb = prepared["model_bytes"] / 1e6
        out: dict = {"model_mb": round(model_mb, 1), "repeats": repeats, "cpus": os.cpu_count(),
                     "load_average": round(os.getloadavg()[0], 2)}
        checks = []
        for name, a, b in (("load", "load_lepton", "load_plain"),
                           ("publish", "publish_lepton", "publish_registry"),
                           ("publish_load", "roundtrip_lepton", "roundtrip_baseline")):
            ra, rb = pair(a, b, work, depth, repeats, env)
            checks += [r["fingerprint"] for r in ra + rb if r["fingerprint"]]
            out[name] = {a: {"seconds": _summary(ra, "seconds"), "peak_extra_mb": _summary(ra, "peak_extra", 1e-6)},
                         b: {"seconds": _summary(rb, "seconds"), "peak_extra_mb": _summary(rb, "peak_extra", 1e-6)},
                         "time_ratio": round(statistics.median(x["seconds"] for x in ra)
                                             / statistics.median(x["seconds"] for x in rb), 3),
                         "peak_ratio": round(statistics.median(x["peak_extra"] for x in ra)
                                             / max(1, statistics.median(x["peak_extra"] for x in rb)), 3),
                         "peaks_measured": all(x["peak_raised"] for x in ra + rb)}
        out["publish"]["peak_beyond_model_ratio"] = round(
            out["publish"]["publish_lepton"]["peak_extra_mb"]["median"] / model_mb, 3)
        out["publish_load"]["speed_vs_baseline"] = round(1 / out["publish_load"]["time_ratio"], 3)
        out["same_predictions"] = all(c == prepared["fingerprint"] for c in checks)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(r: dict) -> str:
    def row(label, x, note=""):
        s, p = x["seconds"], x["peak_extra_mb"]
        return (f"{label:44} {s['median']:8.3f} [{s['spread'][0]:.3f}-{s['spread'][1]:.3f}]"
                f" {p['median']:9.1f} MB  {note}")

    lines = [f"model {r['model_mb']} MB; median [min-max] of {r['repeats']} alternating runs, each in a fresh"
             f" process; load average {r['load_average']}",
             f"{'':44} {'seconds':>8} {'':15} {'peak above start':>12}"]
    lines.append(row("load: lepton_lab.load", r["load"]["load_lepton"]))
    lines.append(row("load: torch.load + build + load_state_dict", r["load"]["load_plain"],
                     f"time {r['load']['time_ratio']}x, peak {r['load']['peak_ratio']}x (targets <= 1.1x)"))
    lines.append(row("publish: lepton_lab.publish", r["publish"]["publish_lepton"],
                     f"peak beyond the model {r['publish']['peak_beyond_model_ratio']}x its size (target <= 1.1x)"))
    lines.append(row("publish: Registry.publish", r["publish"]["publish_registry"],
                     f"time {r['publish']['time_ratio']}x (target <= 1.1x)"))
    lines.append(row("publish + load: lepton_lab", r["publish_load"]["roundtrip_lepton"]))
    lines.append(row("publish + load: AES-GCM+SHA-256 file, fsyncs", r["publish_load"]["roundtrip_baseline"],
                     f"lepton at {r['publish_load']['speed_vs_baseline']:.0%} of the baseline (target >= 80 %)"))
    lines.append(f"same predictions after every load: {r['same_predictions']}; peaks measured: "
                 f"{all(r[k]['peaks_measured'] for k in ('load', 'publish', 'publish_load'))}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="64 MB, 3 repeats")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.work), a.depth)))
        return
    size, repeats = (64, 3) if a.quick else (a.size_mb, a.repeats)
    result = bench(size, repeats)
    print(table(result))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
