"""Stopping a job's work on the cluster when the user interrupts the call waiting for it.

Cancelling a Dask future stops a task that has not started. A task already running in
a worker thread goes on until it returns (Python cannot stop a thread from outside),
keeping its thread, memory and site resources. So a worker still executing a task of
the job after a short grace is restarted by its nanny (``Client.restart_workers``).
Every verb that waits on the cluster hands its interruption to :func:`stop_job`, which
returns the one-line :class:`~lepton_lab.errors.Interrupted` to raise instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from ..errors import Interrupted

logger = logging.getLogger(__name__)

#: Seconds a cancelled task may take to return by itself before its worker is restarted.
GRACE = 2.0
#: Seconds a nanny may take to bring a restarted worker back.
RESTART_TIMEOUT = 60.0
#: Worker states of a task whose code is still running in a thread.
_RUNNING = ("executing", "long-running")


def stop_job(client: Any, label: str, *, futures: Iterable[Any] = (), keys: Iterable[Any] = (),
             job: str | None = None, grace: float = GRACE) -> Interrupted:
    """Cancel a job and free the workers it held; returns the exception to raise.

    The job is ``futures``, the tasks of ``keys``, and (when ``job`` is given) every
    unfinished task annotated ``job=...``. A worker still running one of them ``grace``
    seconds after the cancel is restarted. ``label`` names the job in the message,
    e.g. ``cancelled job cell on edge-0``.
    """
    futures = [f for f in futures if f is not None]
    wanted = {f.key for f in futures} | set(keys)
    try:
        return _shielded(lambda: _stop(client, label, futures, wanted, job, grace))
    except Exception as e:
        logger.warning("could not cancel job %s", label, exc_info=True)
        return Interrupted(f"job {label} stopped waiting, but cancelling its tasks failed "
                           f"({type(e).__name__}); check the cluster with lepton_lab.status()")


def _stop(client: Any, label: str, futures: list[Any], wanted: set, job: str | None,
          grace: float) -> Interrupted:
    from distributed import Future

    held = client.run_on_scheduler(_held, keys=list(wanted), job=job)
    running = _running_on(client, None, wanted, job)
    names = {**held["workers"], **{a: n for a, (n, _) in running.items()}}
    known = {f.key for f in futures}
    extra: list[Future] = [Future(k, client) for k in held["keys"] if k not in known]
    if futures or extra:
        # Never force=True: distributed's recursive cancel asserts on dependents nobody wants.
        client.cancel(futures + extra)
    end = time.monotonic() + grace
    while running and time.monotonic() < end:
        time.sleep(0.1)
        running = _running_on(client, list(running), wanted, job)
    restarted: list[str] = []
    if running:
        logger.info("job %s: restarting %s, still running its cancelled tasks", label,
                       ", ".join(n for n, _ in running.values()))
        status = client.restart_workers(list(running), timeout=RESTART_TIMEOUT, raise_for_error=False)
        restarted = [running[a][0] for a, s in status.items() if s == "OK"]
        failed = [running[a][0] for a, s in status.items() if s != "OK"]
        if failed:
            return Interrupted(f"cancelled job {label}, but {', '.join(failed)} did not restart within "
                               f"{RESTART_TIMEOUT:g} s and may still run it; see the dashboard")
    return Interrupted(_message(label, sorted(set(names.values()), key=_natural), restarted))


def _message(label: str, workers: list[str], restarted: list[str]) -> str:
    if not workers:
        return f"cancelled job {label} before it started"
    text = f"cancelled job {label} on {', '.join(workers)}"
    if restarted:
        text += f" (restarted {', '.join(sorted(restarted, key=_natural))} to stop its running code)"
    return text


def _natural(name: str) -> tuple:
    head, _, tail = str(name).rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (str(name), 0)


def _running_on(client: Any, workers: list[str] | None, keys: set, job: str | None) -> dict[str, tuple[str, int]]:
    """``{address: (name, tasks)}`` of the workers still running a task of the job."""
    answers = client.run(_running, keys=list(keys), job=job, workers=workers, on_error="ignore")
    return {a: (name, n) for a, (name, n) in answers.items() if n}


def _shielded(fn: Callable[[], Interrupted]) -> Interrupted:
    """Run ``fn`` to its end even if the user interrupts again while it works."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="lepton-stop-job")
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            continue
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- run on the scheduler and the workers -----------------------------------------------------


def _held(dask_scheduler: Any, keys: list[Any], job: str | None) -> dict[str, Any]:
    """The job's unfinished task keys, and ``{address: name}`` of the workers processing them."""
    wanted = set(keys)
    out_keys: list[Any] = []
    workers: dict[str, str] = {}
    for ts in list(dask_scheduler.tasks.values()):
        if ts.key not in wanted and (job is None or (ts.annotations or {}).get("job") != job):
            continue
        if ts.state in ("memory", "erred", "forgotten", "released"):
            continue
        out_keys.append(ts.key)
        ws = ts.processing_on
        if ws is not None:
            workers[ws.address] = str(ws.name)
    return {"keys": out_keys, "workers": workers}


def _running(dask_worker: Any, keys: list[Any], job: str | None) -> tuple[str, int]:
    """This worker's name and how many tasks of the job its threads still run, cancelled or not."""
    wanted = set(keys)
    n = 0
    for ts in list(dask_worker.state.tasks.values()):
        state = ts.previous if ts.state in ("cancelled", "resumed") else ts.state
        if state not in _RUNNING:
            continue
        if ts.key in wanted or (job is not None and (ts.annotations or {}).get("job") == job):
            n += 1
    return str(dask_worker.name), n
