"""What one try at a training is (context, attempt, outcome) and what every kind of training shares."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..checkpoints import Checkpoints as _Checkpoints
from .data import _Table, _Task
from .sites import _hold, _host_cpus, _natural, _Site, _Worker

logger = logging.getLogger(__name__)

#: Seconds a collective operation (xgboost allreduce, torch gloo) may wait for a peer.
COLLECTIVE_TIMEOUT = 120


@dataclass
class _Context:
    client: Any
    name: str
    site: _Site
    run: str
    table: _Table
    task: _Task
    checkpoints: _Checkpoints
    seed: int
    test_size: float
    topic: str
    job: str
    attempt: int = 0
    # Set by the supervisor: how long a start may wait without progress, and when the training must end.
    stall_timeout: float | None = None
    deadline: float | None = None


@dataclass
class _Outcome:
    model: Any
    metrics: dict[str, float]
    history: list[dict[str, float]]
    workers: list[str]
    steps: int
    ranks: list[dict[str, Any]] = field(default_factory=list)


class _Attempt:
    """One try at training: tasks (or a thread driving them) and the workers it depends on."""

    def __init__(self, ctx: _Context, workers: dict[str, str], *, futures: Sequence[Any] = (),
                 thread_fn: Callable[[], Any] | None = None, cleanup: Callable[[], None] | None = None,
                 collect: Callable[[list[Any]], _Outcome] | None = None, ranks: dict[int, str] | None = None):
        self.ctx = ctx
        self.workers = workers  # address -> name
        self.ranks = ranks or {}  # data-parallel rank -> worker name, watched one by one
        self.futures = list(futures)
        self.collect = collect
        self._cleanup = cleanup
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if thread_fn is not None:
            self._thread = threading.Thread(target=self._run, args=(thread_fn,), daemon=True,
                                            name=f"lepton-train-{ctx.name}")
            self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result = fn()
        except BaseException as e:  # handed to the watcher
            self._error = e

    def done(self) -> bool:
        if self._thread is not None:
            return not self._thread.is_alive()
        return all(f.done() for f in self.futures) or any(f.status in ("error", "cancelled") for f in self.futures)

    def wait(self, seconds: float) -> None:
        """Block up to ``seconds``, returning early when something finishes."""
        if self._thread is not None:
            self._thread.join(seconds)
            return
        pending = [f for f in self.futures if not f.done()]
        if pending:
            from distributed import wait

            try:
                wait(pending, timeout=seconds, return_when="FIRST_COMPLETED")
            except Exception:  # a timeout, or cancelled futures: the watcher looks at them next
                pass

    def settle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the thread driving this attempt to end; False if it did not."""
        if self._thread is not None:
            self._thread.join(seconds)
            return not self._thread.is_alive()
        return True

    def outcome(self) -> _Outcome:
        if self._thread is not None:
            if self._error is not None:
                raise self._error
            return self._result
        values = [f.result() for f in self.futures]
        return self.collect(values) if self.collect else values[0]

    def cancel(self, *, interrupted: bool = False) -> Any:
        """Cancel this attempt's tasks. After an interrupt, also restart the workers still
        running them and return the one-line ``Interrupted`` to raise."""
        client = self.ctx.client
        if interrupted:
            from ...cluster.interrupt import stop_job

            return stop_job(client, self.ctx.job, futures=self.futures, job=self.ctx.job)
        try:
            # Never force=True: distributed's recursive cancel asserts on dependents nobody wants.
            if self.futures:
                client.cancel(self.futures)
            # Tasks a helper thread submitted (xgboost.dask): found by their job annotation.
            keys = client.run_on_scheduler(_job_keys, job=self.ctx.job)
            if keys:
                from distributed import Future

                client.cancel([Future(k, client) for k in keys])
        except Exception:
            logger.debug("cancel failed", exc_info=True)

    def cleanup(self) -> None:
        if self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:
                logger.debug("cleanup failed", exc_info=True)
        # Drop every reference to the cluster's data now, not when a GC cycle gets to it.
        self.futures.clear()
        self._cleanup = self.collect = None


def _job_keys(dask_scheduler: Any, job: str) -> list[Any]:
    return [ts.key for ts in dask_scheduler.tasks.values()
            if (ts.annotations or {}).get("job") == job and not ts.dependents and ts.who_wants
            and ts.state in ("processing", "no-worker", "queued", "waiting")]


class _Clock:
    """Seconds spent per phase of a task, for ``TrainResult.ranks``."""

    def __init__(self):
        self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now


class _Background:
    """Run ``fn`` in a thread; ``result()`` joins it."""

    def __init__(self, fn: Callable[[], Any]):
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._value = fn()
        except BaseException as e:
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class _Job:
    """What a kind of training does; the supervisor runs it."""

    unit = "round"
    total = 0
    strategy = ""

    def start(self, resume: dict[str, Any] | None) -> _Attempt:  # pragma: no cover - interface
        raise NotImplementedError

    def final_model(self, outcome: _Outcome) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    # Shared: one worker of the site, plus the idle workers on its host whose threads it borrows.
    def _one_worker(self, ctx: _Context, gpu_first: bool = True,
                    borrow: bool = True) -> tuple[_Worker, list[_Worker], int]:
        workers = ctx.site.workers()
        # Our own holds of a previous run may still be winding down: they do not count.
        mine = f"train-{ctx.name}-hold-"
        processing = {a: sum(1 for k in v if not str(k).startswith(mine))
                      for a, v in ctx.client.processing().items()}
        pick = sorted(workers, key=lambda w: (not (gpu_first and w.gpu), processing.get(w.address, 0) > 0,
                                              -w.nthreads, -w.memory_limit, _natural(w.name)))[0]
        pool = [w for w in workers if borrow and w.host == pick.host and w.address != pick.address
                and not processing.get(w.address) and not w.gpu]
        if not pool:
            return pick, [], pick.nthreads
        cpus = ctx.client.run(_host_cpus, workers=[pick.address]).get(pick.address, pick.nthreads)
        threads = pick.nthreads
        borrowed = []
        for w in pool:
            if threads + w.nthreads > cpus:
                break
            threads += w.nthreads
            borrowed.append(w)
        return pick, borrowed, threads

    @staticmethod
    def hold_event(ctx: _Context) -> str:
        return f"lepton-train-{ctx.run}-{ctx.attempt}-done"

    def _reserve(self, ctx: _Context, borrowed: list[_Worker]) -> list[Any]:
        return [ctx.client.submit(_hold, self.hold_event(ctx), 7 * 24 * 3600.0, workers=[w.address],
                                  allow_other_workers=False,
                                  resources={ctx.site.name: w.nthreads}, pure=False,
                                  key=f"train-{ctx.name}-hold-{w.name}-{uuid.uuid4().hex[:6]}")
                for w in borrowed]
