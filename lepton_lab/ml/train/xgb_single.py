"""XGBoost in one worker process with all its host's threads: the data sent there, and the training it runs."""

from __future__ import annotations

import logging
import time
from typing import Any

import dask
import numpy as np

from ..metrics import holdout_metrics as _metrics
from ..progress import worker_name as _worker_name
from .data import _plain_matrix, _split_indices, _take
from .job import _Attempt, _Clock, _Context, _Job, _Outcome
from .shm import _opened, _SharedArrays
from .sites import _openmp_threads, _profiler_paused, _release, _resources, _roomy_malloc, _Worker
from .xgb_params import _early_stopping
from .xgb_progress import _xgb_history, _XGBProgress
from .xgb_split import VALIDATION_SIZE, _dask_split, _monitor_rows

logger = logging.getLogger(__name__)


def _place_and_submit(job: _Job, ctx: _Context, pick: _Worker, borrowed: list[_Worker], spec: dict[str, Any],
                      shared: _SharedArrays, why: str, placed: dict[str, Any]) -> tuple[_Attempt, str]:
    """Send the data to ``pick`` (shared memory, scatter or persisted partitions) and submit the training there.

    Returns the attempt and the strategy line that says how it runs.
    """
    client = ctx.client
    t = ctx.table
    key = f"train-{ctx.name}-xgboost-{ctx.run}-{ctx.attempt}"
    restrict = dict(workers=[pick.address], allow_other_workers=False)
    matrix = _plain_matrix(t)
    if not t.dask and matrix is not None and _SharedArrays.usable(client, pick, t.nbytes):
        train_idx, test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)
        y = np.asarray(t.y)
        args: tuple[Any, ...] = (shared.put("X", matrix, train_idx), shared.put("y", y, train_idx), None,
                                 shared.put("X_test", matrix, test_idx), shared.put("y_test", y, test_idx))
        if t.frame:
            spec["feature_names"] = t.names
        data = []
        transfer = "shared memory"
    elif not t.dask:
        _, test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)
        X_f, y_f, idx_f = client.scatter([t.X, t.y, test_idx], hash=False, workers=[pick.address])
        args = (X_f, y_f, idx_f, None, None)
        data = [X_f, y_f, idx_f]
        transfer = "scatter"
    else:
        # Built outside dask.annotate: dask-expr collections refuse annotations.
        parts = _dask_split(ctx, placed, persist_on=[pick.address])
        args = (parts["X"], parts["y"], None, parts["X_test"], parts["y_test"])
        data = [f for v in parts.values() for f in v]
        transfer = "persisted partitions"
        if borrowed:
            _in_memory(ctx, pick, data)
    pooled = f", borrowing the threads of {', '.join(w.name for w in borrowed)} on its host" if borrowed else ""
    strategy = (f"single: trained in one process on {pick.name} with {spec['nthread']} thread(s)"
                f"{pooled}, data by {transfer}; {why}")
    with dask.annotate(job=ctx.job):
        holds = job._reserve(ctx, borrowed)
        fut = client.submit(_xgb_single_task, *args, spec, key=key, pure=False,
                            resources=_resources(ctx.site.name, pick.nthreads, pick.gpu), **restrict)

    def collect(values: list[dict]) -> _Outcome:
        out = values[0]
        return _Outcome(out["model"], out["metrics"], out["history"], [pick.name] + [w.name for w in borrowed],
                        len(out["history"]), [{"rank": 0, "worker": out["worker"], "threads": out["nthread"],
                                               "seconds": out["seconds"]}])

    def cleanup() -> None:
        _release(client, holds, data, job.hold_event(ctx))
        shared.cleanup()
        placed.clear()

    return _Attempt(ctx, {pick.address: pick.name}, futures=[fut], collect=collect, cleanup=cleanup), strategy


#: Seconds between two looks at whether the persisted partitions are ready (and their worker alive).
READY_POLL = 1.0


def _in_memory(ctx: _Context, pick: _Worker, futures: list[Any]) -> None:
    """Wait until the persisted partitions are computed, ``pick`` is gone, or they stall.

    The holds that come next take every thread of the borrowed workers until the
    training ends. A task the partitions still need that Dask placed on one of
    them (a key the fingerprint's computation shares, or one the data's own graph
    pins there) would then wait behind its hold, and the training behind it, for
    ever. A partition that fails is the training task's error to report; a lost
    ``pick`` is the supervisor's to see; so is data that makes no progress for
    the stall timeout or past the deadline: the training is submitted all the
    same and the supervisor's watch reports it.
    """
    from distributed import wait

    done, since = 0, time.monotonic()
    while True:
        try:
            wait(futures, timeout=READY_POLL)
            return
        except TimeoutError:
            pass
        if pick.address not in ctx.site.live():
            return
        now_done = sum(f.done() for f in futures)
        now = time.monotonic()
        if now_done > done:
            done, since = now_done, now
        stalled = ctx.stall_timeout is not None and now - since > ctx.stall_timeout
        if stalled or (ctx.deadline is not None and now > ctx.deadline):
            why = f"none more for {now - since:.0f} s" if stalled else "the job's deadline has passed"
            logger.warning("training %s: %d of %d data partitions computed, %s; training without waiting for them",
                           ctx.name, done, len(futures), why)
            return


def _concat(parts: Any) -> Any:
    if not isinstance(parts, list):
        return parts
    if len(parts) == 1:
        return parts[0]
    if hasattr(parts[0], "iloc"):
        import pandas as pd

        return pd.concat(parts)
    return np.concatenate(parts)


def _xgb_single_task(X: Any, y: Any, test_idx: Any, X_test: Any, y_test: Any, spec: dict[str, Any]) -> dict:
    """Train in this worker process with ``spec["nthread"]`` threads; returns the model's bytes."""
    with _openmp_threads(int(spec["nthread"])), _roomy_malloc(), _profiler_paused():
        return _xgb_single(X, y, test_idx, X_test, y_test, spec)


def _xgb_single(X: Any, y: Any, test_idx: Any, X_test: Any, y_test: Any, spec: dict[str, Any]) -> dict:
    import xgboost as xgb

    clock = _Clock()
    X, y, X_test, y_test = (_opened(v) for v in (X, y, X_test, y_test))
    X, y = _concat(X), _concat(y)
    if test_idx is not None:
        mask = np.zeros(len(y), dtype=bool)
        mask[test_idx] = True
        X_test, y_test = _take(X, np.flatnonzero(mask)), y[mask]
        X, y = _take(X, np.flatnonzero(~mask)), y[~mask]
    else:
        X_test, y_test = _concat(X_test), _concat(y_test)
    y_test = np.asarray(y_test)
    stop = spec.get("early_stopping")
    if stop:
        fit, val = _split_indices(len(y), VALIDATION_SIZE, spec.get("seed", 0) + 1)
        X_val, y_val = _take(X, val), _take(y, val)
        X, y = _take(X, fit), _take(y, fit)
    nthread = int(spec["nthread"])
    params = dict(spec["params"])
    params.setdefault("nthread", nthread)  # the nanny set OMP_NUM_THREADS=1: say it explicitly
    cat = bool(spec.get("categorical"))
    names = spec.get("feature_names")
    clock.lap("data")
    dtrain = xgb.QuantileDMatrix(X, y, nthread=nthread, enable_categorical=cat, feature_names=names)
    mon = _monitor_rows(len(y_test), spec.get("seed", 0))
    X_mon, y_mon = (X_test, y_test) if mon is None else (_take(X_test, mon), y_test[mon])
    dmon = xgb.QuantileDMatrix(X_mon, y_mon, ref=dtrain, nthread=nthread, enable_categorical=cat,
                               feature_names=names)
    evals = [(dmon, "holdout")]
    callbacks = []
    if stop:
        evals.append((xgb.QuantileDMatrix(X_val, y_val, ref=dtrain, nthread=nthread, enable_categorical=cat,
                                          feature_names=names), "validation"))
        callbacks.append(_early_stopping(int(stop), params))
    clock.lap("dmatrix")
    resume = spec.get("resume")
    booster = xgb.Booster(model_file=bytearray(resume)) if resume else None
    done = booster.num_boosted_rounds() if booster is not None else 0
    evals_log: dict = {}
    callback = _XGBProgress(spec["topic"], spec["run"], spec["rounds"], spec["checkpoints"],
                            spec.get("history", []), _worker_name())
    booster = xgb.train(params, dtrain, num_boost_round=spec["rounds"] - done, evals=evals,
                        evals_result=evals_log, verbose_eval=False, xgb_model=booster,
                        callbacks=[callback, *callbacks])
    clock.lap("train")
    del dtrain, dmon, evals
    pred = booster.inplace_predict(X_test)
    metrics = _metrics(spec["task"], y_test, pred)
    clock.lap("evaluate")
    return {
        "model": bytes(booster.save_raw("ubj")),
        "history": spec.get("history", []) + _xgb_history(evals_log, done),
        "metrics": metrics,
        "worker": _worker_name(),
        "nthread": nthread,
        "seconds": clock.laps,
    }
