"""XGBoost across a site's workers with ``xgboost.dask``, driven from a thread of the client."""

from __future__ import annotations

from typing import Any

import dask
import numpy as np

from ..metrics import holdout_metrics as _metrics
from .job import COLLECTIVE_TIMEOUT, _Attempt, _Context, _Outcome
from .sites import _release, _Worker
from .xgb_params import _early_stopping
from .xgb_progress import _xgb_history, _XGBProgress
from .xgb_split import _dask_split, _scatter_parts


def _start_distributed(ctx: _Context, workers: list[_Worker], spec: dict[str, Any], total: int,
                       early_stopping: int | None, why: str, placed: dict[str, Any]) -> tuple[_Attempt, str]:
    """Place the data on ``workers`` and start ``xgboost.dask`` training over them.

    Returns the attempt and the strategy line that says how it runs.
    """
    client = ctx.client
    gpu = all(w.gpu for w in workers)
    names = [w.name for w in workers]
    strategy = (f"distributed: xgboost.dask over {len(workers)} worker(s) of {ctx.site.name} "
                f"({', '.join(names)}){', on GPUs' if gpu else ''}; {why}")
    addrs = [w.address for w in workers]
    if ctx.table.dask:
        parts = _dask_split(ctx, placed, persist_on=addrs, validation=bool(early_stopping))
        colls = placed
        X_tr, y_tr, X_te, y_te = colls["X"], colls["y"], colls["X_test"], colls["y_test"]
        X_mon, y_mon = X_te, y_te
        X_val, y_val = colls.get("X_val"), colls.get("y_val")
        data = [f for v in parts.values() for f in v]
    else:
        X_tr, y_tr, X_te, y_te, X_mon, y_mon, X_val, y_val, data = _scatter_parts(ctx, workers, early_stopping)

    def run() -> _Outcome:
        import xgboost as xgb
        from xgboost import dask as dxgb
        from xgboost.collective import Config

        cat = ctx.table.categorical
        booster = xgb.Booster(model_file=bytearray(spec["resume"])) if spec["resume"] else None
        done = booster.num_boosted_rounds() if booster is not None else 0
        callback = _XGBProgress(ctx.topic, ctx.run, total, spec["checkpoints"], spec["history"])
        dtrain = dxgb.DaskQuantileDMatrix(client, X_tr, y_tr, enable_categorical=cat)
        dmon = dxgb.DaskQuantileDMatrix(client, X_mon, y_mon, ref=dtrain, enable_categorical=cat)
        evals = [(dmon, "holdout")]
        callbacks = [callback]
        if early_stopping:
            evals.append((dxgb.DaskQuantileDMatrix(client, X_val, y_val, ref=dtrain, enable_categorical=cat),
                           "validation"))
            callbacks.append(_early_stopping(early_stopping, spec["params"]))
        # The annotation reaches the tasks xgboost submits, so the allocation view shows the
        # job; dask-expr collections ignore annotations, so none are built inside.
        with dask.annotate(job=ctx.job):
            out = dxgb.train(client, spec["params"], dtrain, num_boost_round=total - done,
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
        placed.clear()

    return _Attempt(ctx, {w.address: w.name for w in workers}, thread_fn=run, cleanup=cleanup), strategy
