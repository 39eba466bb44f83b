"""The supervisor: runs a training's attempts, watches workers and progress, resumes from checkpoints."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from ...errors import LeptonError, first_line
from .. import progress as _progress
from .job import _Attempt, _Context, _Job, _Outcome
from .result import TrainingError

logger = logging.getLogger(__name__)

#: Seconds between two looks at the scheduler's worker set while training runs (a finished
#: or failed task is noticed at once; this only bounds how late a vanished worker is seen).
WATCH_INTERVAL = 1.0


#: Seconds without a progress event after which an attempt is taken as stuck and restarted.
STALL_TIMEOUT = 600.0
#: Seconds to wait for a site to have a worker again after losing one.
WORKER_WAIT = 30.0
#: Seconds survivors get to drop a cancelled training task before they are restarted.
GRACE = 15.0


class _Retry(Exception):
    """An attempt that cannot finish: workers left (``lost``) or it stopped making progress."""

    def __init__(self, lost: dict[str, str], reason: str = ""):
        self.lost = lost
        self.reason = reason or f"worker {', '.join(sorted(lost.values()))} left"
        super().__init__(self.reason)


def _busy_with(dask_worker: Any, job: str) -> int:
    """Tasks of ``job`` still executing on this worker (a thread stuck in a collective, say)."""
    n = 0
    for ts in list(dask_worker.state.tasks.values()):
        if ts.state in ("executing", "cancelled", "long-running") and (ts.annotations or {}).get("job") == job:
            n += 1
    return n


_COMM_ERROR = re.compile(r"socket|connection|closed|peer|allreduce|allgather|broadcast|gloo|nccl|"
                         r"poll error|killed|lost|cancel|timed? ?out|broken pipe|rendezvous", re.I)


def _supervise(job: "_Job", ctx: _Context, listener: _progress.ProgressListener, *, max_restarts: int,
               timeout: float | None, stall_timeout: float | None) -> tuple[_Outcome, int | None, int]:
    """Run attempts until one finishes; resume from the last checkpoint when a worker is lost."""
    deadline = time.monotonic() + timeout if timeout else None
    ctx.stall_timeout, ctx.deadline = stall_timeout, deadline
    restarts = 0
    resumed_from: int | None = None
    resume: dict[str, Any] | None = None
    while True:
        ctx.attempt = restarts
        try:
            attempt = job.start(resume)
        except LeptonError:
            raise
        except Exception as e:
            raise TrainingError(f"training {ctx.name}: could not start on site {ctx.site.name}: "
                                + first_line(e, named=True, limit=300)) from e
        try:
            return _watch(ctx, attempt, listener, deadline, stall_timeout), resumed_from, restarts
        except _Retry as retry:
            attempt.cancel()
            _free_survivors(ctx, attempt, set(retry.lost))
            # The next attempt builds its graphs only once this one's thread has let go of
            # its own (two threads building dask-expr graphs can hang each other on 3.11).
            if not attempt.settle(GRACE):
                logger.warning("training %s: the cancelled attempt's thread is still running", ctx.name)
            restarts += 1
            resume = ctx.checkpoints.latest() if ctx.checkpoints.every else None
            step = int(resume["step"]) if resume else 0
            where = f"{job.unit} {step}" if step else "the start (no checkpoint yet)"
            if restarts > max_restarts:
                saved = (f"last checkpoint at {job.unit} {step} in {ctx.checkpoints.dir}" if step
                         else "no checkpoint was written")
                hint = ("if workers ran out of memory, use more workers or a larger --memory" if retry.lost
                        else "see the worker logs (dashboard) for what it waits on")
                raise TrainingError(
                    f"training {ctx.name}: {retry.reason} and max_restarts={max_restarts} is used up; "
                    f"{saved}; {hint}") from None
            resumed_from = step
            logger.warning("training %s: %s; resuming from %s", ctx.name, retry.reason, where)
            listener.note(f"{retry.reason}; resumed at {job.unit} {step}")
            listener.rewind(step)
            if not ctx.site.wait_for_workers(WORKER_WAIT):
                raise TrainingError(f"training {ctx.name}: no worker left on site {ctx.site.name} "
                                    f"({retry.reason}); scale the site up and train again") from None
        except BaseException as e:  # an error, a timeout, or the user interrupting the cell
            if isinstance(e, KeyboardInterrupt):
                raise attempt.cancel(interrupted=True) from None
            attempt.cancel()
            if isinstance(e, LeptonError) or not isinstance(e, Exception):
                raise
            raise TrainingError(f"training {ctx.name} failed on site {ctx.site.name}: "
                                + first_line(e, named=True, limit=300)) from e
        finally:
            attempt.cleanup()


def _watch(ctx: _Context, attempt: _Attempt, listener: _progress.ProgressListener, deadline: float | None,
           stall_timeout: float | None) -> _Outcome:
    """Wait for the attempt; a worker leaving, an error a lost worker explains, or no progress
    event for ``stall_timeout`` seconds (a collective waiting forever, say) is a _Retry."""
    started = time.monotonic()
    while True:
        if attempt.done():
            try:
                return attempt.outcome()
            except Exception as e:
                # The error may arrive a moment before the scheduler notices the dead worker.
                wait = 5.0 if _COMM_ERROR.search(f"{type(e).__name__} {e}") else 0.5
                lost = _lost(ctx, attempt, wait)
                if lost:
                    raise _Retry(lost) from e
                raise
        lost = _lost(ctx, attempt, 0.0)
        if lost:
            raise _Retry(lost)
        if stall_timeout is not None and attempt.ranks:
            silent = listener.silent(ctx.attempt, attempt.ranks, since=started, longer_than=stall_timeout)
            if silent:
                raise _Retry({}, "; ".join(
                    f"rank {rank} on {worker} (site {ctx.site.name}) silent for {quiet:.0f} s in phase {phase!r}"
                    for rank, worker, quiet, phase in silent))
        elif stall_timeout is not None:
            quiet = time.monotonic() - max(started, listener.last_time)
            if quiet > stall_timeout:
                raise _Retry({}, f"no progress for {quiet:.0f} s on site {ctx.site.name} ({_job_state(ctx)})")
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingError(f"training {ctx.name} did not finish within the timeout; "
                                f"checkpoints are in {ctx.checkpoints.dir}")
        attempt.wait(WATCH_INTERVAL)


def _job_state(ctx: _Context) -> str:
    """What the scheduler says the job's tasks are doing, for a stall message."""
    try:
        states = ctx.client.run_on_scheduler(_job_task_states, job=ctx.job)
    except Exception:
        return "scheduler did not answer"
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no tasks on the scheduler"


def _job_task_states(dask_scheduler: Any, job: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for ts in dask_scheduler.tasks.values():
        if (ts.annotations or {}).get("job") == job:
            out[ts.state] = out.get(ts.state, 0) + 1
    return out


def _lost(ctx: _Context, attempt: _Attempt, wait: float) -> dict[str, str]:
    end = time.monotonic() + wait
    while True:
        try:
            live = ctx.site.live()
        except Exception:  # the scheduler itself is gone
            raise TrainingError(f"training {ctx.name}: lost the scheduler; start the cluster again") from None
        lost = {a: n for a, n in attempt.workers.items() if a not in live}
        if lost or time.monotonic() >= end:
            return lost
        time.sleep(0.1)


def _free_survivors(ctx: _Context, attempt: _Attempt, lost: set[str]) -> None:
    """Wait for survivors to drop the cancelled training; restart the ones stuck in it."""
    survivors = [a for a in attempt.workers if a not in lost]
    if not survivors:
        return
    end = time.monotonic() + GRACE
    busy: dict[str, int] = {}
    while time.monotonic() < end:
        try:
            busy = {a: n for a, n in ctx.client.run(_busy_with, job=ctx.job, workers=survivors,
                                                    on_error="ignore").items() if n}
        except Exception:
            return
        if not busy:
            return
        time.sleep(0.2)
    logger.warning("training %s: restarting worker(s) %s stuck in the cancelled training",
                   ctx.name, ", ".join(busy))
    try:
        ctx.client.restart_workers(list(busy), timeout=60)
    except Exception:
        logger.exception("could not restart %s", busy)
