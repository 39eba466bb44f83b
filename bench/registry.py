"""Registry publish + load against raw AES-GCM and SHA-256 on the same bytes, in one run.

``python bench/registry.py [size_mb]`` prints a table and writes
``bench/results/registry.json``. The raw baseline is one-shot
``AESGCM.encrypt`` + ``AESGCM.decrypt`` + ``hashlib.sha256`` of the whole
buffer in memory; the registry side is ``Registry.publish`` of the same bytes
(serialise, encrypt, SHA-256 of the plaintext, sign, fsync, atomic rename, index)
plus ``Registry.load`` (signature, every GCM tag, plaintext SHA-256, bytes back).
Each repeat runs both, interleaved, so machine noise hits both alike; the
medians of ``repeats`` runs are reported, after one unrecorded warm-up round:
on a VM the first touch of guest memory (new heap or page-cache pages) costs
several times a later one, and that would be measuring the VM, not the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lepton_lab.registry import Registry
from lepton_lab.security.vault import CHUNK_SIZE, KeyRing

RESULTS = Path(__file__).resolve().parent / "results" / "registry.json"


def _raw_round(data: bytes) -> float:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    start = time.perf_counter()
    sealed = aead.encrypt(nonce, data, None)
    opened = aead.decrypt(nonce, sealed, None)
    hashlib.sha256(data).hexdigest()
    elapsed = time.perf_counter() - start
    assert len(opened) == len(data)
    return elapsed


def bench_publish_load(size_mb: int = 200, repeats: int = 3) -> dict:
    """Median seconds and MB/s of registry publish+load vs raw crypto on ``size_mb`` MB.

    Returns a JSON-ready dict with both throughputs and their ratio
    (target: the registry at 70 % or more of raw).
    """
    size = size_mb * 1_000_000
    data = os.urandom(size)
    workdir = Path(tempfile.mkdtemp(prefix="lepton-bench-registry-"))
    registry = Registry(workdir / "registry", KeyRing(workdir / "keys"))
    raw, publish, load = [], [], []
    try:
        for round_ in range(repeats + 1):
            raw.append(_raw_round(data))

            start = time.perf_counter()
            manifest = registry.publish(data, name="big", team="bench", user="bench")
            publish.append(time.perf_counter() - start)

            start = time.perf_counter()
            loaded = registry.load("big", team="bench", version=manifest.version)
            load.append(time.perf_counter() - start)
            assert loaded.model == data
            del loaded
            registry.delete_version("big", "bench", manifest.version)
            if round_ == 0:
                raw, publish, load = [], [], []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    raw_s = statistics.median(raw)
    pub_s, load_s = statistics.median(publish), statistics.median(load)
    both_s = statistics.median(p + q for p, q in zip(publish, load, strict=True))
    mb = size / 1e6
    return {
        "size_mb": size_mb,
        "repeats": repeats,
        "chunk_size": CHUNK_SIZE,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "raw_seconds": raw_s,
        "raw_mb_s": mb / raw_s,
        "publish_seconds": pub_s,
        "publish_mb_s": mb / pub_s,
        "load_seconds": load_s,
        "load_mb_s": mb / load_s,
        "registry_seconds": both_s,
        "registry_mb_s": mb / both_s,
        "ratio": raw_s / both_s,
        "runs": {"raw": raw, "publish": publish, "load": load},
    }


def _table(result: dict) -> str:
    rows = [
        ("raw AES-GCM enc+dec + SHA-256", result["raw_seconds"], result["raw_mb_s"]),
        ("registry publish", result["publish_seconds"], result["publish_mb_s"]),
        ("registry load", result["load_seconds"], result["load_mb_s"]),
        ("registry publish + load", result["registry_seconds"], result["registry_mb_s"]),
    ]
    lines = [f"{'':32} {'median s':>9} {'MB/s':>8}"]
    lines += [f"{label:32} {sec:9.3f} {mbs:8.0f}" for label, sec, mbs in rows]
    lines.append(
        f"ratio registry/raw: {result['ratio']:.0%} (target >= 70%), "
        f"{result['size_mb']} MB, median of {result['repeats']}, "
        f"load average {result['load_average']:.1f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    outcome = bench_publish_load(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    print(_table(outcome))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"wrote {RESULTS}")
