"""How an XGBoost training's data is cut: holdout, validation set, per-round sample, one piece per worker."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import _split_indices, _take
from .job import _Context
from .sites import _Worker

#: The per-round metric is measured on at most this many holdout rows (a random sample);
#: the final metrics use the whole holdout. Evaluating 100k rows every round cost about
#: a tenth of the training time.
MONITOR_ROWS = 10_000

#: With early stopping, this fraction of the training rows is set aside as the validation
#: set the stopping rule watches; the holdout stays untouched for the final metrics.
VALIDATION_SIZE = 0.1


def _monitor_rows(n: int, seed: int) -> np.ndarray | None:
    """Rows of the holdout that the per-round metric is measured on (all when it is small)."""
    if n <= MONITOR_ROWS:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, MONITOR_ROWS, replace=False))


def _dask_split(ctx: _Context, placed: dict[str, Any], persist_on: list[str],
                validation: bool = False) -> dict[str, list[Any]]:
    """Split Dask data into train/holdout (and validation), persisted on ``persist_on``; futures per partition.

    The persisted collections go into ``placed`` by name.
    """
    from distributed import futures_of

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
        placed[k] = coll
    return out


def _scatter_parts(ctx: _Context, workers: list[_Worker], early_stopping: int | None) -> tuple[Any, ...]:
    """In-memory data cut into one piece per worker and scattered there (no big graph).

    Returns train X, y; holdout X, y; the holdout sample for the per-round metric; the
    validation X, y of early stopping (None without it); futures.
    """
    import dask.array as da

    t = ctx.table
    train_idx, test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)
    mon = _monitor_rows(len(test_idx), ctx.seed)
    mon_idx = test_idx if mon is None else test_idx[mon]
    val_idx = None
    if early_stopping:
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
