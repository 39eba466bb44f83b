"""The XGBoost training: in one worker process with all its host's threads, or across workers with ``xgboost.dask``."""

from __future__ import annotations

import time
from typing import Any

import dask
import numpy as np

from .. import progress as _progress
from ..checkpoints import save_checkpoint as _save_checkpoint
from ..metrics import holdout_metrics as _metrics
from ..progress import worker_name as _worker_name
from .data import _plain_matrix, _split_indices, _take, _Task
from .job import COLLECTIVE_TIMEOUT, _Attempt, _Clock, _Context, _Job, _Outcome
from .shm import _opened, _SharedArrays
from .sites import _openmp_threads, _profiler_paused, _release, _resources, _roomy_malloc, _Worker

#: The data fits one worker when this many times its size fits in the worker's memory
#: limit: raw data, the training copy after the holdout split, the quantised matrix and
#: gradients.
MEMORY_FACTOR = 3.0
MEMORY_FRACTION = 0.6


#: The per-round metric is measured on at most this many holdout rows (a random sample);
#: the final metrics use the whole holdout. Evaluating 100k rows every round cost about
#: a tenth of the training time.
MONITOR_ROWS = 10_000

#: With early stopping, this fraction of the training rows is set aside as the validation
#: set the stopping rule watches; the holdout stays untouched for the final metrics.
VALIDATION_SIZE = 0.1


def _XGBProgress(*args: Any, **kwargs: Any) -> Any:
    """``xgboost.callback.TrainingCallback``: post progress and write checkpoints (rank 0 only)."""
    return _xgb_callback_class()(*args, **kwargs)


_callback_class: Any = None


def _xgb_callback_class() -> Any:
    # Built on first use so that importing this module (on every worker) does not import xgboost.
    global _callback_class
    if _callback_class is None:
        import xgboost

        _callback_class = type("LeptonXGBCallback", (_XGBProgressBase, xgboost.callback.TrainingCallback), {})
    return _callback_class


class _XGBProgressBase:
    def __init__(self, topic: str, run: str, total: int, checkpoints: dict[str, Any],
                 history: list[dict[str, float]], worker: str = ""):
        self.topic = topic
        self.run = run
        self.total = total
        self.ckpt = checkpoints
        self.prior = list(history)
        self.worker = worker
        self.start_round: int | None = None
        self.sent = 0  # last round posted
        self.sent_at = 0.0
        self.log: dict | None = None

    def __reduce__(self):
        return (_XGBProgress, (self.topic, self.run, self.total, self.ckpt, self.prior, self.worker))

    def before_training(self, model):
        self.start_round = model.num_boosted_rounds()
        return model

    def after_iteration(self, model, epoch, evals_log) -> bool:
        from xgboost import collective

        if collective.get_rank() != 0:
            return False
        done = model.num_boosted_rounds()
        every = self.ckpt.get("every", 0)
        checkpoint = bool(every) and (done % every == 0 or done == self.total)
        now = time.monotonic()
        # At most a few messages a second (every round's metrics ride along): each one wakes
        # the worker's event loop, which stalls the training threads at their next barrier.
        if checkpoint or done == self.total or now - self.sent_at >= _progress.MIN_INTERVAL:
            rows = _xgb_history(evals_log, self.start_round or 0)
            fresh = [r for r in rows if r["round"] > self.sent]
            latest = {k: v for k, v in fresh[-1].items() if k != "round"} if fresh else {}
            _progress.post(self.topic, {"run": self.run, "round": done, "total": self.total, "metrics": latest,
                                        "rows": fresh, "worker_name": self.worker or _worker_name()})
            self.sent, self.sent_at = done, now
        if checkpoint:
            history = self.prior + _xgb_history(evals_log, self.start_round or 0)
            raw = model.save_raw("ubj")
            _save_checkpoint(self.ckpt, "xgboost", done, lambda f: f.write(bytes(raw)), history)
        self.log = evals_log
        return False

    def after_training(self, model):
        # Early stopping ends before the last round: post the rounds not yet shown.
        from xgboost import collective

        done = model.num_boosted_rounds()
        if collective.get_rank() == 0 and done > self.sent and self.log is not None:
            fresh = [r for r in _xgb_history(self.log, self.start_round or 0) if r["round"] > self.sent]
            latest = {k: v for k, v in fresh[-1].items() if k != "round"} if fresh else {}
            _progress.post(self.topic, {"run": self.run, "round": done, "total": self.total, "metrics": latest,
                                        "rows": fresh, "worker_name": self.worker or _worker_name()})
            self.sent = done
        return model


def _xgb_history(evals_log: dict, start: int) -> list[dict[str, float]]:
    data: dict = next(iter(evals_log.values()), {})
    n = max((len(v) for v in data.values()), default=0)
    return [{"round": start + i + 1, **{m: float(v[i]) for m, v in data.items() if i < len(v)}}
            for i in range(n)]


def _xgb_params(task: _Task, params: dict[str, Any], gpu: bool) -> dict[str, Any]:
    p: dict[str, Any] = {"tree_method": "hist"}
    if task.kind == "binary":
        p.update(objective="binary:logistic", eval_metric=["auc", "error"])
    elif task.kind == "multiclass":
        p.update(objective="multi:softprob", num_class=task.n_classes, eval_metric=["merror", "mlogloss"])
    else:
        p.update(objective="reg:squarederror", eval_metric=["rmse"])
    if "objective" in params and "eval_metric" not in params:
        p.pop("eval_metric", None)
    p.update(params)
    if gpu:
        p["device"] = "cuda"
    return p


def _early_stopping(rounds: int, params: dict[str, Any]) -> Any:
    """XGBoost's rule: stop when the validation set's first metric has not improved for ``rounds`` rounds."""
    import xgboost as xgb

    metric = params.get("eval_metric")
    if isinstance(metric, (list, tuple)):
        metric = metric[0] if metric else None
    return xgb.callback.EarlyStopping(rounds=rounds, metric_name=metric, data_name="validation", save_best=False)


def _concat(parts: Any) -> Any:
    if not isinstance(parts, list):
        return parts
    if len(parts) == 1:
        return parts[0]
    if hasattr(parts[0], "iloc"):
        import pandas as pd

        return pd.concat(parts)
    return np.concatenate(parts)


def _monitor_rows(n: int, seed: int) -> np.ndarray | None:
    """Rows of the holdout that the per-round metric is measured on (all when it is small)."""
    if n <= MONITOR_ROWS:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, MONITOR_ROWS, replace=False))


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


class _XGBoostJob(_Job):
    unit = "round"

    def __init__(self, ctx: _Context, *, rounds: int, params: dict[str, Any], strategy: str,
                 workers: int | None, early_stopping: int | None = None):
        self.ctx = ctx
        self.early_stopping = early_stopping
        self.total = rounds
        self.params = params
        self.n_workers = workers
        self.asked = strategy
        self.strategy = ""
        self.placed: dict[str, Any] = {}
        self.mode = self._choose(strategy)

    # -- choosing -------------------------------------------------------------------------

    def _choose(self, strategy: str) -> str:
        ctx = self.ctx
        workers = ctx.site.workers()
        size = ctx.table.nbytes
        biggest = max((w.memory_limit for w in workers), default=0)
        fits = not biggest or size * MEMORY_FACTOR <= biggest * MEMORY_FRACTION
        from dask.utils import format_bytes

        mem = format_bytes(biggest) if biggest else "no limit"
        if strategy == "single":
            self.why = "as asked"
            return "single"
        if strategy == "distributed":
            self.why = "as asked"
            return "distributed"
        if len(workers) == 1 or (self.n_workers == 1):
            self.why = f"site {ctx.site.name} offers one worker"
            return "single"
        if fits:
            self.why = (f"the data ({format_bytes(size)}) fits one worker ({mem}), and one process using "
                        f"all of a host's threads beats splitting the work across processes")
            return "single"
        self.why = (f"the data ({format_bytes(size)}) is more than one worker of {ctx.site.name} holds "
                    f"({mem} × {MEMORY_FRACTION:g}/{MEMORY_FACTOR:g})")
        return "distributed"

    # -- running --------------------------------------------------------------------------

    def _spec(self, resume: dict[str, Any] | None, gpu: bool) -> dict[str, Any]:
        ctx = self.ctx
        spec = {
            "params": _xgb_params(ctx.task, self.params, gpu),
            "rounds": self.total, "task": ctx.task.kind, "topic": ctx.topic, "run": ctx.run,
            "checkpoints": ctx.checkpoints.spec(), "categorical": ctx.table.categorical,
            "history": [], "resume": None, "seed": ctx.seed, "early_stopping": self.early_stopping,
        }
        if resume:
            spec["resume"] = ctx.checkpoints.read(resume)
            spec["history"] = [r for r in resume.get("history", []) if r.get("round", 0) <= resume["step"]]
        return spec

    def start(self, resume: dict[str, Any] | None) -> _Attempt:
        return self._start_single(resume) if self.mode == "single" else self._start_distributed(resume)

    def _start_single(self, resume: dict[str, Any] | None) -> _Attempt:
        ctx = self.ctx
        pick, borrowed, threads = self._one_worker(ctx)
        spec = self._spec(resume, pick.gpu)
        spec["nthread"] = int(self.params.get("nthread", threads))
        shared = _SharedArrays(f"{ctx.run}-{ctx.attempt}")
        try:
            return self._place_and_submit(ctx, pick, borrowed, spec, shared)
        except BaseException:
            shared.cleanup()
            raise

    def _place_and_submit(self, ctx: _Context, pick: _Worker, borrowed: list[_Worker], spec: dict[str, Any],
                          shared: "_SharedArrays") -> _Attempt:
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
            self.transfer = "shared memory"
        elif not t.dask:
            _, test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)
            X_f, y_f, idx_f = client.scatter([t.X, t.y, test_idx], hash=False, workers=[pick.address])
            args = (X_f, y_f, idx_f, None, None)
            data = [X_f, y_f, idx_f]
            self.transfer = "scatter"
        else:
            # Built outside dask.annotate: dask-expr collections refuse annotations.
            parts = self._dask_split(persist_on=[pick.address])
            args = (parts["X"], parts["y"], None, parts["X_test"], parts["y_test"])
            data = [f for v in parts.values() for f in v]
            self.transfer = "persisted partitions"
        pooled = f", borrowing the threads of {', '.join(w.name for w in borrowed)} on its host" if borrowed else ""
        self.strategy = (f"single: trained in one process on {pick.name} with {spec['nthread']} thread(s)"
                         f"{pooled}, data by {self.transfer}; {self.why}")
        with dask.annotate(job=ctx.job):
            holds = self._reserve(ctx, borrowed)
            fut = client.submit(_xgb_single_task, *args, spec, key=key, pure=False,
                                resources=_resources(ctx.site.name, pick.nthreads, pick.gpu), **restrict)

        def collect(values: list[dict]) -> _Outcome:
            out = values[0]
            return _Outcome(out["model"], out["metrics"], out["history"], [pick.name] + [w.name for w in borrowed],
                            len(out["history"]), [{"rank": 0, "worker": out["worker"], "threads": out["nthread"],
                                                   "seconds": out["seconds"]}])

        def cleanup() -> None:
            _release(client, holds, data, self.hold_event(ctx))
            shared.cleanup()
            self.placed.clear()

        return _Attempt(ctx, {pick.address: pick.name}, futures=[fut], collect=collect, cleanup=cleanup)

    def _dask_split(self, persist_on: list[str], validation: bool = False) -> dict[str, list[Any]]:
        """Split Dask data into train/holdout (and validation), persisted on ``persist_on``; futures per partition."""
        from distributed import futures_of

        ctx = self.ctx
        t = ctx.table
        X, y = t.X, t.y
        frac = float(ctx.test_size) if ctx.test_size < 1 else float(ctx.test_size) / t.n_rows
        if t.frame:
            import dask.dataframe as dd

            whole = dd.concat([X, y.to_frame("__lepton_target__")], axis=1) if hasattr(y, "to_frame") \
                else X.assign(__lepton_target__=y)
            train_df, test_df = whole.random_split([1 - frac, frac], random_state=ctx.seed)
            cols = [c for c in whole.columns if c != "__lepton_target__"]
            colls = {"X_test": test_df[cols], "y_test": test_df["__lepton_target__"]}
            if validation:
                train_df, val_df = train_df.random_split([1 - VALIDATION_SIZE, VALIDATION_SIZE],
                                                         random_state=ctx.seed + 1)
                colls.update(X_val=val_df[cols], y_val=val_df["__lepton_target__"])
            colls.update(X=train_df[cols], y=train_df["__lepton_target__"])
        else:
            import dask.array as da

            X = X.rechunk({1: -1})
            y = y.rechunk((X.chunks[0],))
            mask = da.random.default_rng(ctx.seed).random(X.shape[0], chunks=(X.chunks[0],)) < frac
            colls = {"X": X[~mask], "y": y[~mask], "X_test": X[mask], "y_test": y[mask]}
            if validation:
                val = ~mask & (da.random.default_rng(ctx.seed + 1).random(X.shape[0], chunks=(X.chunks[0],))
                               < VALIDATION_SIZE)
                colls.update(X=X[~mask & ~val], y=y[~mask & ~val], X_val=X[val], y_val=y[val])
        persisted = ctx.client.persist(list(colls.values()), workers=persist_on, allow_other_workers=False)
        out = {}
        for k, coll in zip(colls, persisted):
            # Partition order is in the key's index (the collection's own keys may be renamed).
            out[k] = sorted(futures_of(coll), key=lambda f: f.key[1:] if isinstance(f.key, tuple) else ())
            self.placed[k] = coll
        return out

    def _start_distributed(self, resume: dict[str, Any] | None) -> _Attempt:
        ctx = self.ctx
        client = ctx.client
        workers = ctx.site.workers()
        if self.n_workers:
            workers = workers[: self.n_workers]
        gpu = all(w.gpu for w in workers)
        spec = self._spec(resume, gpu)
        names = [w.name for w in workers]
        self.strategy = (f"distributed: xgboost.dask over {len(workers)} worker(s) of {ctx.site.name} "
                         f"({', '.join(names)}){', on GPUs' if gpu else ''}; {self.why}")
        addrs = [w.address for w in workers]
        if ctx.table.dask:
            parts = self._dask_split(persist_on=addrs, validation=bool(self.early_stopping))
            colls = self.placed
            X_tr, y_tr, X_te, y_te = colls["X"], colls["y"], colls["X_test"], colls["y_test"]
            X_mon, y_mon = X_te, y_te
            X_val, y_val = colls.get("X_val"), colls.get("y_val")
            data = [f for v in parts.values() for f in v]
        else:
            X_tr, y_tr, X_te, y_te, X_mon, y_mon, X_val, y_val, data = self._scatter_parts(workers)

        def run() -> _Outcome:
            import xgboost as xgb
            from xgboost import dask as dxgb
            from xgboost.collective import Config

            cat = ctx.table.categorical
            booster = xgb.Booster(model_file=bytearray(spec["resume"])) if spec["resume"] else None
            done = booster.num_boosted_rounds() if booster is not None else 0
            callback = _XGBProgress(ctx.topic, ctx.run, self.total, spec["checkpoints"], spec["history"])
            dtrain = dxgb.DaskQuantileDMatrix(client, X_tr, y_tr, enable_categorical=cat)
            dmon = dxgb.DaskQuantileDMatrix(client, X_mon, y_mon, ref=dtrain, enable_categorical=cat)
            evals = [(dmon, "holdout")]
            callbacks = [callback]
            if self.early_stopping:
                evals.append((dxgb.DaskQuantileDMatrix(client, X_val, y_val, ref=dtrain, enable_categorical=cat),
                               "validation"))
                callbacks.append(_early_stopping(self.early_stopping, spec["params"]))
            # The annotation reaches the tasks xgboost submits, so the allocation view shows the
            # job; dask-expr collections ignore annotations, so none are built inside.
            with dask.annotate(job=ctx.job):
                out = dxgb.train(client, spec["params"], dtrain, num_boost_round=self.total - done,
                                 evals=evals, xgb_model=booster, callbacks=callbacks,
                                 verbose_eval=False, coll_cfg=Config(timeout=COLLECTIVE_TIMEOUT))
            model = out["booster"]
            pred = dxgb.predict(client, model, X_te)
            pred = client.compute(pred, sync=True)
            y_true = client.compute(y_te, sync=True)
            history = spec["history"] + _xgb_history(out["history"], done)
            return _Outcome(bytes(model.save_raw("ubj")), _metrics(ctx.task.kind, np.asarray(y_true), pred),
                            history, names, len(history),
                            [{"rank": i, "worker": n, "threads": w.nthreads} for i, (n, w) in
                             enumerate(zip(names, workers))])

        def cleanup() -> None:
            _release(client, [], data)
            self.placed.clear()

        return _Attempt(ctx, {w.address: w.name for w in workers}, thread_fn=run, cleanup=cleanup)

    def _scatter_parts(self, workers: list[_Worker]):
        """In-memory data cut into one piece per worker and scattered there (no big graph).

        Returns train X, y; holdout X, y; the holdout sample for the per-round metric; the
        validation X, y of early stopping (None without it); futures.
        """
        import dask.array as da

        ctx = self.ctx
        t = ctx.table
        train_idx, test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)
        mon = _monitor_rows(len(test_idx), ctx.seed)
        mon_idx = test_idx if mon is None else test_idx[mon]
        val_idx = None
        if self.early_stopping:
            fit, val = _split_indices(len(train_idx), VALIDATION_SIZE, ctx.seed + 1)
            train_idx, val_idx = train_idx[fit], train_idx[val]
        futures: list[Any] = []
        colls = []
        for idx in (train_idx, test_idx, mon_idx, val_idx):
            if idx is None:
                colls += [None, None]
                continue
            pieces = [p for p in np.array_split(idx, len(workers)) if len(p)]
            xs, ys = [], []
            for w, piece in zip(workers, pieces):
                xp, yp = _take(t.X, piece), t.y[piece]
                fx, fy = ctx.client.scatter([xp, yp], workers=[w.address], hash=False)
                futures += [fx, fy]
                if t.frame:
                    xs.append((fx, xp.iloc[:0]))
                else:
                    xs.append(da.from_delayed(fx, shape=xp.shape, dtype=xp.dtype))
                ys.append(da.from_delayed(fy, shape=yp.shape, dtype=yp.dtype))
            if t.frame:
                import dask.dataframe as dd

                X = dd.from_delayed([f for f, _ in xs], meta=xs[0][1], verify_meta=False)
            else:
                X = da.concatenate(xs)
            colls += [X, da.concatenate(ys)]
        return (*colls, futures)

    def final_model(self, outcome: _Outcome) -> Any:
        import xgboost as xgb

        return xgb.Booster(model_file=bytearray(outcome.model))
