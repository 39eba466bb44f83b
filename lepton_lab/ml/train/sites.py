"""A site's workers, the holds that lend their threads to a training, and the tuning of a training process."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

from ...errors import ConfigError


@dataclass
class _Worker:
    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float]
    host: str

    @property
    def gpu(self) -> bool:
        return self.resources.get("GPU", 0) > 0


class _Site:
    """The workers of one site, as the scheduler sees them now."""

    def __init__(self, client: Any, name: str):
        self.client = client
        self.name = name

    def workers(self, *, required: bool = True) -> list[_Worker]:
        from distributed.comm import get_address_host

        from ...cluster.workers import workers_now

        for attempt in range(3 if required else 1):
            if attempt:  # a worker between death and restart, or a stale answer: look again
                time.sleep(0.5 * attempt)
            info = workers_now(self.client)
            out = [_Worker(addr, str(w.get("name", addr)), int(w.get("nthreads", 1)),
                           int(w.get("memory_limit") or 0), dict(w.get("resources") or {}),
                           get_address_host(addr))
                   for addr, w in info.items() if self.name in (w.get("resources") or {})]
            if out:
                break
        if not out and required:
            known = sorted({r for w in info.values() for r in (w.get("resources") or {}) if r != "GPU"})
            raise ConfigError(f"no workers on site {self.name!r} (sites of this cluster: "
                              f"{', '.join(known) or 'none'}); pick one with site=, or scale it up")
        return sorted(out, key=lambda w: (not w.gpu, _natural(w.name)))

    def wait_for_workers(self, timeout: float) -> list[_Worker]:
        end = time.monotonic() + timeout
        while True:
            found = self.workers(required=False)
            if found or time.monotonic() > end:
                return found
            time.sleep(0.25)

    def live(self) -> dict[str, str]:
        """Address → name of every worker the scheduler has right now (all sites)."""
        return self.client.run_on_scheduler(_scheduler_workers)


def _scheduler_workers(dask_scheduler: Any) -> dict[str, str]:
    return {addr: str(ws.name) for addr, ws in dask_scheduler.workers.items()}


def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def _resources(site: str, threads: int, gpu: bool) -> dict[str, float]:
    res: dict[str, float] = {site: threads}
    if gpu:
        res["GPU"] = 1
    return res


def _hold(event: str, limit: float) -> None:
    """Keep a worker's threads for a training running next to it.

    Returns as soon as the kernel sets ``event`` (training over), or the task is
    cancelled (the kernel went away), or after ``limit`` seconds.
    """
    from distributed import Event, get_worker
    from distributed.worker import thread_state

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    done = Event(event)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        # A long poll on the scheduler: no wake-ups on the core lent to the training.
        if done.wait(2.0):
            return
        ts = worker.state.tasks.get(key) if key is not None else None
        if ts is None or ts.state != "executing":
            return


def _release(client: Any, holds: list[Any], data: list[Any], event: str | None = None) -> None:
    """End the holds, then drop the data."""
    if holds:
        from distributed import Event, wait

        done = Event(event, client=client) if event else None
        if done is not None:
            done.set()
            try:
                # Promptly over: a cluster stopped right after finds no running hold.
                wait(holds, timeout=2)
            except Exception:
                pass
        client.cancel(holds)  # no dependents, so cancel is safe
        if done is not None:
            done.clear()
    for f in data:
        f.release()


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _openmp_threads(n: int):
    """Let OpenMP regions started by this thread use ``n`` threads, for the ``with`` block.

    A nanny starts its worker with OMP_NUM_THREADS=1. XGBoost's ``nthread`` covers
    training, but parts of building a QuantileDMatrix follow OpenMP's own default:
    measured on 500k x 50, 3.6 s in a worker against 2.2 s once the limit is lifted.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, only the default is lost
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="openmp")


@contextlib.contextmanager
def _profiler_paused() -> Iterator[None]:
    """Pause the worker's statistical profiler (a stack sample every 10 ms) for the block.

    While one task keeps every core of the host busy, each sample preempts a training
    thread and the others wait for it at the next barrier: about 6 % of XGBoost's
    training time, measured. The dashboard's profile lacks this task in exchange.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        yield
        return
    callbacks = [pc for pc in (worker.periodic_callbacks.get(k) for k in ("profile", "profile-cycle"))
                 if pc is not None and pc.is_running()]
    for pc in callbacks:
        worker.loop.add_callback(pc.stop)  # PeriodicCallback belongs to the worker's loop thread
    try:
        yield
    finally:
        for pc in callbacks:
            worker.loop.add_callback(pc.start)


@contextlib.contextmanager
def _roomy_malloc() -> Iterator[None]:
    """glibc keeps freed memory for the ``with`` block, then trims eagerly again.

    A nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins the mmap
    threshold at 128 KiB: XGBoost's per-round buffers then go back to the kernel and
    fault in again every round (about 8 % of the training time, measured).
    """
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    libc = None
    if trim is not None and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
    if libc is None or trim is None:
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 32 << 20)
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, 128 << 10)
        libc.mallopt(m_trim_threshold, int(trim))
        libc.malloc_trim(0)
