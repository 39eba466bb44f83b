"""How far each job has come: tasks done of all its tasks, failures, when it started and ended.

Runs on the scheduler, beside the allocation snapshot. The counts are those of Dask's own
progress bars: the tasks the scheduler still holds (``Scheduler.tasks``; data put there by
``scatter`` is no task), a task being done
once its result is in memory or was released after it was computed. Times come from the
scheduler's ``TaskGroup.start``/``stop`` (compute times of finished tasks) and, before any
task has finished, from how long the worker has been executing one (``WorkerState.executing``).

The scheduler forgets a task once nobody holds its result (``compute()`` returned, a cell
ended), so a job that ends would leave the view at once. Each scheduler therefore keeps a
small :class:`JobHistory` in its ``extensions``: a job whose tasks are all forgotten stays,
as ended, for ``config.ENDED_JOB_SECONDS``. Its last unfinished tasks are counted as done (or
erred) from the scheduler's per-prefix counters of tasks that reached memory (or erred) since
the look before; what those cannot account for was cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import config

#: Key of the history in ``Scheduler.extensions``.
EXTENSION = "lepton-jobs"


@dataclass
class JobProgress:
    """A job's progress fields, as they go into the snapshot (seconds since the epoch)."""

    done: int = 0
    total: int = 0
    erred: int = 0
    started: float | None = None
    finished: float | None = None
    elapsed: float = 0.0


@dataclass
class _Seen:
    """What the last look saw of one job."""

    progress: JobProgress
    time: float
    # Task groups only this job's tasks were in, with their prefix's running counts
    # of tasks that reached memory and that erred.
    groups: dict[Any, tuple[int, int]] = field(default_factory=dict)
    ended: bool = False


class JobHistory:
    """The jobs one scheduler showed at its last look, ended ones included."""

    def __init__(self) -> None:
        self.seen: dict[str, _Seen] = {}


def job_of(ts: Any) -> str:
    """The job a task belongs to: its ``job`` annotation, else its key prefix."""
    annotations = ts.annotations
    if annotations and "job" in annotations:
        return str(annotations["job"])
    return str(ts.prefix.name)


def progress(dask_scheduler: Any, now: float) -> dict[str, JobProgress]:
    """Each job's progress: the jobs with tasks on ``dask_scheduler``, then those that ended
    within ``config.ENDED_JOB_SECONDS`` (one pass over tasks, one over executing tasks)."""
    counts: dict[str, list[int]] = {}  # job -> [total, done, erred]
    owner: dict[Any, str | None] = {}  # task group -> its one job, None when jobs share it
    # Tasks of one group mostly come one after another: a task of the same group and job
    # as the one before needs no look-up.
    last_group: Any = None
    last_job = ""
    c = [0, 0, 0]
    for ts in dask_scheduler.tasks.values():
        if ts.run_spec is None:  # data put there (scatter), not a task that runs
            continue
        annotations = ts.annotations
        group = ts.group
        job = str(annotations["job"]) if annotations and "job" in annotations else group.prefix.name
        if group is not last_group or job != last_job:
            c = counts.get(job) or counts.setdefault(job, [0, 0, 0])
            held = owner.get(group, job)
            owner[group] = held if held == job else None
            last_group, last_job = group, job
        c[0] += 1
        state = ts.state
        if state == "memory" or (state == "released" and ts.nbytes >= 0):
            c[1] += 1
        elif state == "erred":
            c[2] += 1

    started: dict[str, float] = {}
    stopped: dict[str, float] = {}
    groups: dict[str, dict[Any, tuple[int, int]]] = {}
    for group, job in owner.items():
        if job is None:
            continue
        if group.start > 0 and group.start < started.get(job, now):
            started[job] = group.start
        if group.stop > stopped.get(job, 0.0):
            stopped[job] = group.stop
        entered = group.prefix.state_counts
        groups.setdefault(job, {})[group] = (entered["memory"], entered["erred"])
    for ws in dask_scheduler.workers.values():
        seen_at = ws.last_seen or now
        for ts, duration in ws.executing.items():
            job = job_of(ts)
            if seen_at - duration < started.get(job, now):
                started[job] = seen_at - duration

    history: JobHistory = dask_scheduler.extensions.setdefault(EXTENSION, JobHistory())
    out: dict[str, JobProgress] = {}
    for job, (total, done, erred) in counts.items():
        before = history.seen.get(job)
        begun = started.get(job)
        if before is not None and not before.ended and before.progress.started is not None:
            begun = before.progress.started if begun is None else min(begun, before.progress.started)
        finished = None
        if done + erred == total:  # nothing left to run
            finished = stopped.get(job) or (before.progress.finished if before and not before.ended else None) or now
        p = out[job] = JobProgress(done, total, erred, begun, finished, _elapsed(begun, finished, now))
        history.seen[job] = _Seen(p, now, groups.get(job, {}))
    for job, before in list(history.seen.items()):
        if job in counts:
            continue
        if not before.ended:
            _end(before, now)
        if now - (before.progress.finished or before.time) > config.ENDED_JOB_SECONDS:
            del history.seen[job]
    ended = sorted((j for j in history.seen if j not in counts),
                   key=lambda j: -(history.seen[j].progress.finished or 0.0))
    for job in ended[config.ENDED_JOBS_KEPT:]:
        del history.seen[job]
    for job in ended[:config.ENDED_JOBS_KEPT]:
        out[job] = history.seen[job].progress
    return out


def _end(seen: _Seen, now: float) -> None:
    """A job whose tasks the scheduler has just forgotten: count what finished since the last look."""
    p = seen.progress
    left = p.total - p.done - p.erred
    if left > 0:
        done = erred = 0
        for group, (memory_before, erred_before) in seen.groups.items():
            entered = group.prefix.state_counts
            done += entered["memory"] - memory_before
            erred += entered["erred"] - erred_before
        p.done += min(left, done)
        p.erred += min(left - min(left, done), erred)
    stops = [g.stop for g in seen.groups if g.stop > 0]
    starts = [g.start for g in seen.groups if g.start > 0]
    if p.finished is None:
        p.finished = max(stops) if stops and max(stops) >= seen.time else now
    if p.started is None and starts:
        p.started = min(starts)
    p.elapsed = _elapsed(p.started, p.finished, now)
    seen.ended = True


def _elapsed(started: float | None, finished: float | None, now: float) -> float:
    return round(max(0.0, (finished or now) - started), 3) if started is not None else 0.0
