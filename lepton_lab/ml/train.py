"""Train XGBoost and PyTorch models on a site's Dask workers, with live progress and restarts.

    result = lepton_lab.train("xgboost", data=df, target="is_fraud", name="fraud", site="cloud")
    result.metrics        # {"auc": 0.993, "accuracy": 0.97} on the holdout
    result.strategy       # which path ran, and why

**XGBoost** trains either in one worker process with all the threads of its host
(``xgboost.train``; on one machine this beats spreading the work, as
``bench/train.py`` measures) or across the site's workers with ``xgboost.dask``;
``strategy="auto"`` picks the first when the data fits one worker's memory.
**PyTorch** trains a user's ``nn.Module`` on one worker, or data-parallel
(``DistributedDataParallel``, gloo on CPU, nccl on GPU) with one rank per
worker, each rank in a child process of its worker
(:mod:`lepton_lab.ml.torch_rank` says why), the rendezvous going through the
Dask cluster.

Every task runs under ``dask.annotate(job=f"train-{name}")``, so the live
allocation view shows the job by name. Workers post a progress event per round
or epoch (:mod:`lepton_lab.ml.progress`) and write a checkpoint every
``checkpoint_every`` rounds or epochs. When a worker dies mid-training, a
watchdog notices the worker set shrinking, cancels what is left and resumes
from the last checkpoint on the site's remaining workers, up to
``max_restarts`` times; then it stops with a one-line :class:`TrainingError`.
A data-parallel rank that falls silent for ``stall_timeout`` seconds (blocked
in a collective, say) is handled the same way, and the error names the rank,
its worker, its site and the phase it was in.

Checkpoints are written by the workers into ``checkpoint_dir`` (default
``$LEPTON_HOME/checkpoints/<name>``): on a local cluster, or with a shared
filesystem, that is the same directory the kernel reads when it resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import html
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import dask
import numpy as np

from .. import config
from ..errors import ClusterError, ConfigError, LeptonError
from . import progress as _progress
from .checkpoints import Checkpoints as _Checkpoints
from .checkpoints import save_checkpoint as _save_checkpoint
from .metrics import holdout_metrics as _metrics
from .progress import worker_name as _worker_name
from .torch_rank import build_module as _build_module
from .torch_rank import run_rank as _run_rank

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainingError", "train"]

KINDS = ("xgboost", "torch")
STRATEGIES = ("auto", "single", "distributed")
OPTIMIZERS = ("adam", "sgd")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: A target with at most this many distinct integral values is a class label.
MAX_CLASSES = 100
#: The data fits one worker when this many times its size fits in the worker's memory
#: limit: raw data, the training copy after the holdout split, the quantised matrix and
#: gradients.
MEMORY_FACTOR = 3.0
MEMORY_FRACTION = 0.6
#: Seconds between two looks at the scheduler's worker set while training runs (a finished
#: or failed task is noticed at once; this only bounds how late a vanished worker is seen).
WATCH_INTERVAL = 1.0
#: Seconds a collective operation (xgboost allreduce, torch gloo) may wait for a peer.
COLLECTIVE_TIMEOUT = 120
#: Seconds without a progress event after which an attempt is taken as stuck and restarted.
STALL_TIMEOUT = 600.0
#: Seconds to wait for a site to have a worker again after losing one.
WORKER_WAIT = 30.0
#: Seconds survivors get to drop a cancelled training task before they are restarted.
GRACE = 15.0
#: The per-round metric is measured on at most this many holdout rows (a random sample);
#: the final metrics use the whole holdout. Evaluating 100k rows every round cost about
#: a tenth of the training time.
MONITOR_ROWS = 10_000
#: A torch model with fewer parameters trains on one thread: more would only add overhead.
TORCH_THREADED_PARAMS = 1_000_000


class TrainingError(ClusterError):
    """A training could not finish: a worker kept dying, the site emptied, or the task failed."""


class _Retry(Exception):
    """An attempt that cannot finish: workers left (``lost``) or it stopped making progress."""

    def __init__(self, lost: dict[str, str], reason: str = ""):
        self.lost = lost
        self.reason = reason or f"worker {', '.join(sorted(lost.values()))} left"
        super().__init__(self.reason)


# =========================================================================== the result


@dataclass
class TrainResult:
    """A trained model and how it came about.

    ``metrics`` are measured on the holdout (AUC and accuracy for a binary
    target, accuracy for several classes, RMSE for a number); ``history`` holds
    one row per round or epoch; ``data_fingerprint`` (SHA-256 of the training
    data) and ``input_schema`` are the lineage the model registry records.
    """

    name: str
    kind: str
    model: Any
    metrics: dict[str, float]
    history: list[dict[str, float]]
    strategy: str
    workers: list[str]
    site: str
    duration_s: float
    checkpoints: str
    resumed_from: int | None
    data_fingerprint: str
    input_schema: dict[str, Any]
    task: str = ""
    classes: list[Any] | None = None
    restarts: int = 0
    progress_events: int = 0
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (everything but the model and the history)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("model", "history")}
        out["steps"] = len(self.history)
        return out

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        resumed = f", resumed from {self.resumed_from}" if self.resumed_from is not None else ""
        return (f"<TrainResult {self.name!r} {self.kind} {self.task} [{metrics}] on {self.site} "
                f"({', '.join(self.workers)}) in {self.duration_s:.1f} s{resumed}>")

    def _repr_html_(self) -> str:
        unit = "rounds" if self.kind == "xgboost" else "epochs"
        rows = [
            ("model", f"{self.kind} ({self.task}), {len(self.history)} {unit}"),
            ("holdout", ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())),
            ("strategy", self.strategy),
            ("workers", f"{', '.join(self.workers)} on {self.site}"),
            ("time", f"{self.duration_s:.1f} s"),
            ("resumed from", "—" if self.resumed_from is None
             else f"{unit[:-1]} {self.resumed_from} ({self.restarts} restart(s))"),
            ("checkpoints", self.checkpoints or "—"),
            ("data", f"{self.input_schema.get('shape')} sha256 {self.data_fingerprint[:16]}…"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return (f"<div class='lepton-train'><b>Lepton training {html.escape(self.name)}</b>"
                f"<table>{body}</table></div>")


# =========================================================================== the entry point


def train(
    kind: str,
    *,
    data: Any,
    target: Any = None,
    name: str,
    site: str = "cloud",
    rounds: int = 100,
    params: dict[str, Any] | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    model: Any = None,
    workers: int | None = None,
    checkpoint_every: int = 10,
    test_size: float = 0.2,
    progress: bool = True,
    client: Any,
    strategy: str = "auto",
    max_restarts: int = 2,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    on_progress: Callable[[dict[str, Any]], Any] | None = None,
    timeout: float | None = None,
    stall_timeout: float | None = STALL_TIMEOUT,
) -> TrainResult:
    """Train a model on the workers of ``site`` and return a :class:`TrainResult`.

    ``kind`` is ``"xgboost"`` or ``"torch"``. ``data`` is a pandas or Dask
    DataFrame with ``target`` naming the label column, or ``(X, y)`` (NumPy,
    pandas, torch or Dask), or ``X`` with ``target`` the label array; for torch
    also a ``torch.utils.data.Dataset``. ``test_size`` (a fraction, or a row
    count) is held out for the metrics.

    XGBoost: ``rounds`` and ``params`` (``xgboost.train`` parameters; objective
    and eval metric follow the target unless given). ``strategy`` ``"auto"``
    trains in one worker when the data fits its memory, else spreads it with
    ``xgboost.dask``; ``"single"``/``"distributed"`` force one.

    PyTorch: ``model`` (an ``nn.Module``, a ``compress.model_spec`` dict or a
    function returning a module), ``epochs``, ``batch_size`` (global, split
    across ranks), ``lr``, ``optimizer`` (``"adam"``/``"sgd"``); ``workers=N``
    trains data-parallel on N workers.

    A checkpoint is written every ``checkpoint_every`` rounds/epochs; a lost
    worker makes training resume from it on the remaining workers, at most
    ``max_restarts`` times. ``on_progress(msg)`` is called for every progress
    event; ``timeout`` (seconds) bounds the whole run; an attempt that sends no
    progress event for ``stall_timeout`` seconds counts as stuck and is
    restarted like a lost worker. ``client`` is the ``distributed.Client`` of the cluster to train on.
    """
    started = time.perf_counter()
    kind = {"pytorch": "torch"}.get(str(kind).lower(), str(kind).lower())
    _check_args(kind, name=name, rounds=rounds, epochs=epochs, batch_size=batch_size, lr=lr,
                optimizer=optimizer, workers=workers, checkpoint_every=checkpoint_every,
                test_size=test_size, strategy=strategy, max_restarts=max_restarts, params=params,
                model=model, timeout=timeout)
    if stall_timeout is not None and not (isinstance(stall_timeout, (int, float)) and stall_timeout > 0):
        raise ConfigError(f"train: stall_timeout must be a positive number of seconds or None, got {stall_timeout!r}")
    site_view = _Site(client, site)
    site_view.workers()  # a clear error now if the site has no workers
    table = _as_table(kind, data, target)
    task = _detect_task(table, params)
    schema = table.schema(task)
    # Hash the user's data (before labels are encoded) while the workers train: sha256
    # releases the GIL on large buffers.
    fingerprint = _Background(functools.partial(_fingerprint, table.header(), table.X, table.y, table.dask,
                                                table.frame))
    table.encode(task)
    checkpoints = _Checkpoints(Path(checkpoint_dir) if checkpoint_dir else
                               config.home() / "checkpoints" / name, checkpoint_every)
    run = uuid.uuid4().hex[:10]
    checkpoints.reset(run)
    ctx = _Context(client=client, name=name, site=site_view, run=run, table=table, task=task,
                   checkpoints=checkpoints, seed=seed, test_size=test_size,
                   topic=_progress.topic_for(name), job=f"train-{name}")
    if kind == "xgboost":
        job: _Job = _XGBoostJob(ctx, rounds=rounds, params=params or {}, strategy=strategy,
                                workers=workers)
    else:
        job = _TorchJob(ctx, model=model, epochs=epochs, batch_size=batch_size, lr=float(lr),
                        optimizer=optimizer, workers=workers, strategy=strategy)
    with _progress.ProgressListener(client, ctx.topic, run, total=job.total, unit=job.unit,
                                    desc=f"train {name}", show=progress,
                                    on_progress=on_progress) as listener:
        outcome, resumed_from, restarts = _supervise(job, ctx, listener, max_restarts=max_restarts,
                                                     timeout=timeout, stall_timeout=stall_timeout)
        listener.wait_for(job.unit, outcome.steps, timeout=1.0)
        events = listener.events
    model_out = job.final_model(outcome)
    return TrainResult(
        name=name, kind=kind, model=model_out, metrics=outcome.metrics, history=outcome.history,
        strategy=job.strategy, workers=outcome.workers, site=site, duration_s=time.perf_counter() - started,
        checkpoints=str(checkpoints.dir) if checkpoints.every else "", resumed_from=resumed_from,
        data_fingerprint=fingerprint.result(), input_schema=schema, task=task.kind,
        classes=task.classes, restarts=restarts, progress_events=events, ranks=outcome.ranks,
    )


def _check_args(kind, *, name, rounds, epochs, batch_size, lr, optimizer, workers, checkpoint_every,
                test_size, strategy, max_restarts, params, model, timeout) -> None:
    if kind not in KINDS:
        raise ConfigError(f"train: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"train: name must be letters, digits, '_', '-' or '.', starting with a "
                          f"letter, at most 64 characters; got {name!r}")
    for label, value, lo in (("rounds", rounds, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                             ("checkpoint_every", checkpoint_every, 0), ("max_restarts", max_restarts, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ConfigError(f"train: {label} must be a whole number >= {lo}, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ConfigError(f"train: workers must be a whole number >= 1, got {workers!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"train: lr must be a positive number, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"train: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"train: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)) \
            or not test_size > 0 or (isinstance(test_size, float) and test_size >= 1):
        raise ConfigError(f"train: test_size must be a fraction in (0, 1) or a row count, got {test_size!r}")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"train: params must be a dict of xgboost parameters, got {type(params).__name__}")
    if kind == "torch" and model is None:
        raise ConfigError("train torch: pass model= (an nn.Module, a model spec or a function returning one)")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"train: timeout must be a positive number of seconds, got {timeout!r}")


# =========================================================================== the site


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

        for attempt in range(3 if required else 1):
            if attempt:  # a worker between death and restart, or a stale answer: look again
                time.sleep(0.5 * attempt)
            info = self.client.scheduler_info(n_workers=-1)["workers"]
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


# =========================================================================== the data


def _is_dask(obj: Any) -> bool:
    return dask.is_dask_collection(obj)


def _is_torch(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("torch")


def _to_numpy(obj: Any) -> Any:
    """A NumPy array (or a pandas DataFrame, kept) from NumPy, pandas, torch or lists."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, pd.Series):
        return obj.to_numpy()
    if _is_torch(obj) and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


@dataclass
class _Task:
    kind: str  # binary, multiclass, regression
    classes: list[Any] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes or ())


class _Table:
    """Features and target, normalised: NumPy/pandas in memory, or Dask collections."""

    def __init__(self, X: Any, y: Any, target_name: str | None):
        self.X = X
        self.y = y
        self.target_name = target_name
        self.dask = _is_dask(X) or _is_dask(y)
        self.frame = hasattr(X, "columns")
        self._n_rows: int | None = None

    # -- shape ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        if self.frame:
            return [str(c) for c in self.X.columns]
        return [f"f{i}" for i in range(self.n_features)]

    @property
    def dtypes(self) -> list[str]:
        if self.frame:
            return [str(t) for t in self.X.dtypes]
        return [str(self.X.dtype)] * self.n_features

    @property
    def n_features(self) -> int:
        return len(self.X.columns) if self.frame else int(self.X.shape[1])

    @property
    def n_rows(self) -> int:
        if self._n_rows is None:
            if self.dask:
                n = self.X.shape[0] if not self.frame else None
                if n is None or (isinstance(n, float) and math.isnan(n)):
                    n = len(self.X)
                self._n_rows = int(n)
            else:
                self._n_rows = len(self.X)
        return self._n_rows

    @property
    def nbytes(self) -> int:
        if self.frame:
            per_row = sum(getattr(t, "itemsize", 8) or 8 for t in self.X.dtypes)
        else:
            per_row = self.X.dtype.itemsize * self.n_features
        return int(self.n_rows * (per_row + 8))

    @property
    def categorical(self) -> bool:
        return self.frame and any(str(t) == "category" for t in self.X.dtypes)

    def schema(self, task: _Task) -> dict[str, Any]:
        return {
            "features": self.names,
            "dtypes": dict(zip(self.names, self.dtypes)),
            "shape": [self.n_rows, self.n_features],
            "target": self.target_name,
            "task": task.kind,
            "classes": task.classes,
        }

    # -- labels ---------------------------------------------------------------------------

    def unique_labels(self) -> np.ndarray:
        if not self.dask:
            return _distinct(self.y)
        # Distinct values per partition, merged here: no shuffle on the cluster.
        blocks = self.y.to_delayed()
        blocks = blocks.ravel().tolist() if hasattr(blocks, "ravel") else list(blocks)
        parts = dask.compute(*[dask.delayed(_distinct)(b) for b in blocks])
        return _distinct(np.concatenate(parts)) if parts else np.asarray([])

    def encode(self, task: _Task) -> None:
        """Class labels become 0..K-1 (``task.classes`` keeps the originals), numbers float32."""
        if task.kind == "regression":
            self.y = self.y.astype("float32")
            return
        assert task.classes is not None, "a classification task knows its classes"
        classes = np.asarray(task.classes, dtype=object if isinstance(task.classes[0], str) else None)
        if np.array_equal(classes, np.arange(len(classes))):
            self.y = self.y.astype("int32") if task.kind != "binary" else self.y.astype("float32")
            return
        lookup = {v: i for i, v in enumerate(task.classes)}
        if not self.dask:
            import pandas as pd

            self.y = pd.Series(self.y).map(lookup).to_numpy().astype("float32")
        elif hasattr(self.y, "map"):
            self.y = self.y.map(lookup, meta=(self.y.name, "float32")).astype("float32")
        else:
            self.y = self.y.map_blocks(_encode_block, lookup, dtype="float32")

    # -- fingerprint ----------------------------------------------------------------------

    def header(self) -> bytes:
        return json.dumps({"names": self.names, "dtypes": self.dtypes,
                           "shape": [self.n_rows, self.n_features],
                           "target": self.target_name}, sort_keys=True).encode()


def _fingerprint(header: bytes, X: Any, y: Any, is_dask: bool, frame: bool) -> str:
    """SHA-256 over the header (names, dtypes, shape, target) and the data's bytes.

    For Dask data each partition is hashed where it lives and the digests are
    hashed in order, so the fingerprint also depends on the partitioning. An
    empty string when the data cannot be hashed (the training goes on).
    """
    try:
        return _fingerprint_of(header, X, y, is_dask, frame)
    except Exception:
        logger.warning("could not fingerprint the training data; lineage will lack it", exc_info=True)
        return ""


def _fingerprint_of(header: bytes, X: Any, y: Any, is_dask: bool, frame: bool) -> str:
    import dask.array as da

    h = hashlib.sha256(header)
    if not is_dask:
        _hash_into(h, X)
        _hash_into(h, y)
        return h.hexdigest()
    if not frame:
        X = X.rechunk({1: -1})
        if hasattr(y, "rechunk"):
            y = y.rechunk((X.chunks[0],))
    xs = X.to_delayed().ravel().tolist() if not frame else X.to_delayed()
    ys = y.to_delayed().ravel().tolist() if isinstance(y, da.Array) else y.to_delayed()
    digests = dask.compute(*[dask.delayed(_part_digest)(a, b) for a, b in zip(xs, ys)])
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def _distinct(values: Any) -> np.ndarray:
    """Sorted distinct non-missing values (text sorted as text)."""
    import pandas as pd

    a = pd.Series(np.asarray(values)).dropna().unique()
    return np.asarray(sorted(a.tolist(), key=str) if a.dtype.kind == "O" else np.sort(a))


def _encode_block(block: np.ndarray, lookup: dict) -> np.ndarray:
    return np.asarray([lookup[v] for v in block.tolist()], dtype="float32")


def _hash_into(h: Any, obj: Any) -> None:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        for _, col in obj.items():
            _hash_into(h, col)
        return
    if isinstance(obj, pd.Series):
        if obj.dtype.kind in "biufcmM":
            h.update(np.ascontiguousarray(obj.to_numpy()).data.cast("B"))
        else:
            h.update(pd.util.hash_pandas_object(obj, index=False).to_numpy().data.cast("B"))
        return
    a = np.asarray(obj)
    if a.dtype.kind == "O":
        _hash_into(h, pd.Series(a.ravel()))
        return
    h.update(np.ascontiguousarray(a).data.cast("B"))


def _part_digest(X: Any, y: Any) -> str:
    h = hashlib.sha256()
    _hash_into(h, X)
    _hash_into(h, y)
    return h.hexdigest()


def _as_table(kind: str, data: Any, target: Any) -> _Table:
    """Split ``data``/``target`` into features and labels; a ConfigError says what is wrong."""

    if kind == "torch" and _is_torch_dataset(data):
        X, y = _dataset_arrays(data)
        return _Table(X, y, None)
    if isinstance(target, (str, int, np.integer)) and not isinstance(target, bool):
        if hasattr(data, "columns"):
            if target not in data.columns:
                cols = [str(c) for c in data.columns]
                more = ", ..." if len(cols) > 12 else ""
                raise ConfigError(f"target {target!r} is not a column of the data "
                                  f"(columns: {', '.join(cols[:12])}{more})")
            X = data.drop(columns=[target])
            y = data[target]
            if not _is_dask(data):
                y = y.to_numpy()
            return _checked(_Table(X, y, str(target)))
        if isinstance(target, str):
            raise ConfigError(f"target={target!r} names a column, but the data is a "
                              f"{type(data).__name__}, not a DataFrame; pass data=(X, y)")
        arr = data if _is_dask(data) else _to_numpy(data)
        if getattr(arr, "ndim", 0) != 2 or not -arr.shape[1] <= target < arr.shape[1]:
            raise ConfigError(f"target column {target} is not in the data (shape {getattr(arr, 'shape', '?')})")
        keep = [i for i in range(arr.shape[1]) if i != target % arr.shape[1]]
        return _checked(_Table(arr[:, keep], arr[:, target], f"column {target}"))
    if target is not None:
        X, y = data, target
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
    else:
        raise ConfigError("train: pass data=DataFrame with target='column', data=(X, y), or "
                          "data=X with target=y")
    if not _is_dask(X):
        X = _to_numpy(X)
    if not _is_dask(y):
        y = _to_numpy(y)
    if hasattr(y, "columns"):
        if len(y.columns) != 1:
            raise ConfigError(f"train: the target must be one column, got {len(y.columns)}")
        y = y.iloc[:, 0] if _is_dask(y) else y.iloc[:, 0].to_numpy()
    return _checked(_Table(X, y, getattr(target, "name", None) if target is not None else None))


def _checked(t: _Table) -> _Table:
    if _is_dask(t.X) != _is_dask(t.y):
        raise ConfigError("train: features and target must both be Dask collections or both in memory")
    if not t.frame and getattr(t.X, "ndim", 0) != 2:
        raise ConfigError(f"train: features must be 2-D (rows × features), got shape {getattr(t.X, 'shape', '?')}")
    if not t.dask:
        if getattr(t.y, "ndim", 1) != 1:
            t.y = np.asarray(t.y).reshape(len(t.y), -1)
            if t.y.shape[1] != 1:
                raise ConfigError(f"train: the target must be 1-D, got shape {t.y.shape}")
            t.y = t.y[:, 0]
        if len(t.X) != len(t.y):
            raise ConfigError(f"train: features have {len(t.X)} rows but the target has {len(t.y)}")
        if len(t.X) < 4:
            raise ConfigError(f"train: {len(t.X)} rows are too few to hold some out")
        if t.frame:
            bad = [str(c) for c, d in t.X.dtypes.items() if d.kind in "OSU"]
            if bad:
                raise ConfigError(f"train: column(s) {', '.join(bad)} hold text; convert them with "
                                  ".astype('category') or drop them")
    return t


def _is_torch_dataset(obj: Any) -> bool:
    try:
        from torch.utils.data import Dataset
    except ImportError:
        return False
    return isinstance(obj, Dataset)


def _dataset_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    from torch.utils.data import TensorDataset

    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0].detach().cpu().numpy(), ds.tensors[1].detach().cpu().numpy()
    xs, ys = [], []
    for i in range(len(ds)):
        x, y = ds[i]
        xs.append(_to_numpy(x))
        ys.append(_to_numpy(y))
    return np.stack(xs), np.asarray(ys)


def _detect_task(table: _Table, params: dict | None) -> _Task:
    """Binary, multiclass or regression, from the objective if given, else from the labels."""
    objective = str((params or {}).get("objective", ""))
    y_dtype = table.y.dtype
    kind_char = getattr(y_dtype, "kind", "O")
    if objective.startswith(("reg:", "count:", "survival:")):
        return _Task("regression")
    if kind_char == "f" and not objective.startswith(("binary:", "multi:")):
        # Floats are class labels only when every value is whole and there are few.
        sample = table.y if not table.dask else table.y.head(10_000) if hasattr(table.y, "head") \
            else table.y[:10_000].compute()
        sample = np.asarray(sample, dtype="float64")
        sample = sample[~np.isnan(sample)]
        if sample.size and not np.all(np.mod(sample, 1) == 0):
            return _Task("regression")
    labels = table.unique_labels()
    if len(labels) < 2:
        raise ConfigError(f"train: the target has {len(labels)} distinct value(s); nothing to learn")
    classification = (kind_char in "biuOUS" or str(y_dtype) == "category" or objective.startswith(("binary:", "multi:"))
                      or (kind_char == "f" and np.all(np.mod(labels.astype(float), 1) == 0)))
    if not classification or (len(labels) > MAX_CLASSES and kind_char not in "OUS"):
        return _Task("regression")
    classes = [v.item() if hasattr(v, "item") else v for v in labels]
    return _Task("binary" if len(classes) == 2 else "multiclass", classes)


def _split_indices(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices, each sorted; the same for the same n, size and seed."""
    n_test = int(test_size) if test_size >= 1 else int(round(n * test_size))
    n_test = min(max(n_test, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _plain_matrix(t: "_Table") -> np.ndarray | None:
    """The features as one numeric NumPy matrix without copying, when they are one (else None)."""
    if t.dask:
        return None
    if not t.frame:
        return t.X if t.X.dtype.kind in "biuf" else None
    dtypes = set(t.X.dtypes)
    if len(dtypes) != 1 or next(iter(dtypes)).kind not in "biuf":
        return None
    return t.X.to_numpy()  # a view when the frame is one block


def _take(a: Any, idx: np.ndarray) -> Any:
    return a.iloc[idx] if hasattr(a, "iloc") else a[idx]


# =========================================================================== running and watching


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
            from ..cluster.interrupt import stop_job

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
                                f"{type(e).__name__}: {_first_line(e)}") from e
        try:
            return _watch(ctx, attempt, listener, deadline, stall_timeout), resumed_from, restarts
        except _Retry as retry:
            attempt.cancel()
            _free_survivors(ctx, attempt, set(retry.lost))
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
                                f"{type(e).__name__}: {_first_line(e)}") from e
        finally:
            attempt.cleanup()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


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


# =========================================================================== shared memory


@dataclass(frozen=True)
class _Shared:
    """An array a worker on this host opens from /dev/shm (memory-mapped, no copy)."""

    path: str

    def open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


def _opened(x: Any) -> Any:
    return x.open() if isinstance(x, _Shared) else x


def _probe_shared(path: str, token: str) -> bool:
    try:
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


class _SharedArrays:
    """Hand arrays to a worker on the kernel's host through /dev/shm instead of a socket.

    Scattering 240 MB to a local worker took 0.8-1.8 s here; writing the rows the
    worker needs into shared memory (gather and write, no serialisation) takes
    about 0.1 s, and the worker maps the file without copying it again.
    """

    ROOT = Path("/dev/shm")
    _checked: dict[str, bool] = {}

    def __init__(self, tag: str):
        self.tag = tag
        self.paths: list[Path] = []

    @classmethod
    def usable(cls, client: Any, worker: _Worker, nbytes: int) -> bool:
        """Whether ``worker`` sees this process's /dev/shm, with room for ``nbytes`` more."""
        import shutil

        if not cls.ROOT.is_dir() or shutil.disk_usage(cls.ROOT).free < 2 * nbytes + (256 << 20):
            return False
        if worker.address not in cls._checked:
            token = uuid.uuid4().hex
            probe = cls.ROOT / f"lepton-probe-{token}"
            try:
                probe.write_text(token)
                seen = client.run(_probe_shared, str(probe), token, workers=[worker.address])
                cls._checked[worker.address] = bool(seen.get(worker.address))
            except Exception:
                cls._checked[worker.address] = False
            finally:
                probe.unlink(missing_ok=True)
        return cls._checked[worker.address]

    def put(self, name: str, source: np.ndarray, rows: np.ndarray) -> _Shared:
        """Write ``source[rows]`` to shared memory; the worker opens it with ``.open()``."""
        path = self.ROOT / f"lepton-train-{self.tag}-{name}.npy"
        self.paths.append(path)
        header = np.lib.format.header_data_from_array_1_0(source[:0])
        header["shape"] = (len(rows),) + source.shape[1:]
        # Gathered in slices and written with write(): 0.1 s for 200 MB, where filling a
        # fresh memory map (a page fault per page) took 0.2-0.7 s.
        step = max(1, (64 << 20) // max(1, source[:1].nbytes))
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, len(rows), step):
                f.write(np.ascontiguousarray(np.take(source, rows[start:start + step], axis=0)).data)
        return _Shared(str(path))

    def cleanup(self) -> None:
        # A worker that mapped a file keeps its pages until it lets go; unlinking is safe.
        for p in self.paths:
            p.unlink(missing_ok=True)
        self.paths.clear()


# =========================================================================== XGBoost


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
        return False


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
    clock.lap("dmatrix")
    resume = spec.get("resume")
    booster = xgb.Booster(model_file=bytearray(resume)) if resume else None
    done = booster.num_boosted_rounds() if booster is not None else 0
    evals_log: dict = {}
    callback = _XGBProgress(spec["topic"], spec["run"], spec["rounds"], spec["checkpoints"],
                            spec.get("history", []), _worker_name())
    booster = xgb.train(params, dtrain, num_boost_round=spec["rounds"] - done, evals=[(dmon, "holdout")],
                        evals_result=evals_log, verbose_eval=False, xgb_model=booster, callbacks=[callback])
    clock.lap("train")
    del dtrain, dmon
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
                 workers: int | None):
        self.ctx = ctx
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
            "history": [], "resume": None, "seed": ctx.seed,
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

    def _dask_split(self, persist_on: list[str]) -> dict[str, list[Any]]:
        """Split Dask data into train/holdout, persisted on ``persist_on``; futures per partition."""
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
            colls = {"X": train_df[cols], "y": train_df["__lepton_target__"],
                     "X_test": test_df[cols], "y_test": test_df["__lepton_target__"]}
        else:
            import dask.array as da

            X = X.rechunk({1: -1})
            y = y.rechunk((X.chunks[0],))
            mask = da.random.default_rng(ctx.seed).random(X.shape[0], chunks=(X.chunks[0],)) < frac
            colls = {"X": X[~mask], "y": y[~mask], "X_test": X[mask], "y_test": y[mask]}
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
            parts = self._dask_split(persist_on=addrs)
            colls = self.placed
            X_tr, y_tr, X_te, y_te = colls["X"], colls["y"], colls["X_test"], colls["y_test"]
            X_mon, y_mon = X_te, y_te
            data = [f for v in parts.values() for f in v]
        else:
            X_tr, y_tr, X_te, y_te, X_mon, y_mon, data = self._scatter_parts(workers)

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
            # The annotation reaches the tasks xgboost submits, so the allocation view shows the
            # job; dask-expr collections ignore annotations, so none are built inside.
            with dask.annotate(job=ctx.job):
                out = dxgb.train(client, spec["params"], dtrain, num_boost_round=self.total - done,
                                 evals=[(dmon, "holdout")], xgb_model=booster, callbacks=[callback],
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

        Returns train X, y; holdout X, y; the holdout sample for the per-round metric; futures.
        """
        import dask.array as da

        ctx = self.ctx
        t = ctx.table
        train_idx, test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)
        mon = _monitor_rows(len(test_idx), ctx.seed)
        mon_idx = test_idx if mon is None else test_idx[mon]
        futures: list[Any] = []
        colls = []
        for idx in (train_idx, test_idx, mon_idx):
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


# =========================================================================== PyTorch

class _TorchJob(_Job):
    unit = "epoch"

    def __init__(self, ctx: _Context, *, model: Any, epochs: int, batch_size: int, lr: float,
                 optimizer: str, workers: int | None, strategy: str):
        self.ctx = ctx
        self.total = epochs
        self.model_spec = self._model_spec(model)
        self.n_params = sum(p.numel() for p in _build_module(self.model_spec).parameters())
        site_workers = ctx.site.workers()
        if strategy == "single":
            n = 1
        elif workers is not None:
            n = workers
        elif strategy == "distributed":
            n = len(site_workers)
        else:
            n = 1
        if n > len(site_workers):
            raise ConfigError(f"train torch: workers={n} but site {ctx.site.name} has "
                              f"{len(site_workers)} worker(s); use workers={len(site_workers)} or scale it up")
        self.n = n
        self.common = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                       "task": ctx.task.kind, "topic": ctx.topic, "run": ctx.run, "seed": ctx.seed,
                       "checkpoints": ctx.checkpoints.spec(), "collective_timeout": COLLECTIVE_TIMEOUT}
        self.strategy = ""
        t = ctx.table
        if t.dask:
            t.X, t.y = dask.compute(t.X, t.y)  # torch trains from memory on each rank
            t.X, t.y = np.asarray(t.X), np.asarray(t.y)
            t.dask = False
        if t.frame:
            t.X = t.X.to_numpy(dtype=np.float32)
            t.frame = False
        self.train_idx, self.test_idx = _split_indices(t.n_rows, ctx.test_size, ctx.seed)

    @staticmethod
    def _model_spec(model: Any) -> dict[str, Any]:
        from torch import nn

        if isinstance(model, nn.Module):
            return {"kind": "module", "value": model}
        if isinstance(model, dict):
            return {"kind": "spec", "value": model}
        if callable(model):
            return {"kind": "factory", "value": model}
        raise ConfigError(f"train torch: model must be an nn.Module, a model spec dict or a function "
                          f"returning a module, got {type(model).__name__}")

    def start(self, resume: dict[str, Any] | None) -> _Attempt:
        ctx = self.ctx
        client = ctx.client
        t = ctx.table
        spec = dict(self.common, model=self.model_spec, resume=None, attempt=ctx.attempt)
        if resume:
            spec["resume"] = ctx.checkpoints.read(resume)
        X_tr, y_tr = t.X[self.train_idx], t.y[self.train_idx]
        X_te, y_te = t.X[self.test_idx], t.y[self.test_idx]
        holds: list[Any] = []
        futures: list[Any] = []
        data: list[Any] = []
        workers = ctx.site.workers()
        n = min(self.n, len(workers))
        if n < self.n:
            logger.warning("training %s: %d of %d workers left; continuing on %d", ctx.name,
                           len(workers), self.n, n)
        if n == 1:
            # Small models lose from intra-op threads (measured: a 5k-parameter MLP on digits ran
            # 10x slower on 2 threads than on 1 on a busy 2-core machine).
            big = self.n_params >= TORCH_THREADED_PARAMS
            pick, borrowed, threads = self._one_worker(ctx, borrow=big)
            chosen = [pick]
            spec.update(nthread=threads, gpu=pick.gpu, backend="none", host="", init_method="")
            pooled = f", borrowing the threads of {', '.join(w.name for w in borrowed)}" if borrowed else ""
            why = ("pass workers=N for data-parallel DDP" if self.n == 1 else
                   f"only one worker of {ctx.site.name} was left for the {self.n} ranks asked for")
            if not big:
                why += f"; {self.n_params:,} parameters are too few to gain from more threads"
            self.strategy = (f"single: one worker ({pick.name}, {threads} thread(s){pooled}"
                             f"{', GPU' if pick.gpu else ''}) trains the whole model; {why}")
        else:
            chosen = workers[:n]
            borrowed = []
            gpu = all(w.gpu for w in chosen)
            backend = "nccl" if gpu else "gloo"
            host = chosen[0].host
            port = client.run(_free_port, workers=[chosen[0].address])[chosen[0].address]
            spec.update(nthread=None, gpu=gpu, backend=backend, host=host, init_method=f"tcp://{host}:{port}")
            self.strategy = (f"distributed: DistributedDataParallel ({backend}) over {len(chosen)} workers of "
                             f"{ctx.site.name} ({', '.join(w.name for w in chosen)}), one data shard each, "
                             f"rendezvous at {host}:{port} on {chosen[0].name}")
        world = len(chosen)
        # DistributedSampler-style shards: padded to a multiple of the world size, so every
        # rank runs the same number of steps (uneven ranks would hang in allreduce).
        n_tr = len(X_tr)
        padded = np.resize(np.arange(n_tr), int(math.ceil(n_tr / world)) * world)
        with dask.annotate(job=ctx.job):
            holds = self._reserve(ctx, borrowed)
            for rank, w in enumerate(chosen):
                rows = padded[rank::world]
                pieces = [X_tr[rows], y_tr[rows]] + ([X_te, y_te] if rank == 0 else [])
                fs = client.scatter(pieces, workers=[w.address], hash=False)
                data += fs
                if rank != 0:
                    fs += [None, None]
                rank_spec = dict(spec)
                if rank_spec["nthread"] is None:
                    rank_spec["nthread"] = w.nthreads
                futures.append(client.submit(
                    _run_rank, rank, world, *fs, rank_spec, key=f"train-{ctx.name}-torch-{ctx.run}-"
                    f"{ctx.attempt}-rank{rank}", pure=False, workers=[w.address], allow_other_workers=False,
                    resources=_resources(ctx.site.name, 1, w.gpu)))

        def collect(values: list[dict]) -> _Outcome:
            values = sorted(values, key=lambda v: v["rank"])
            lead = values[0]
            history = lead["history"]
            metrics = {k: v for k, v in history[-1].items() if k not in ("epoch", "loss")} if history else {}
            ranks = [{"rank": v["rank"], "worker": v["worker"], "threads": v["threads"], "digest": v["digest"],
                      "pid": v["pid"]} for v in values]
            return _Outcome(lead["state"], metrics, history, [w.name for w in chosen] + [w.name for w in borrowed],
                            len(history), ranks)

        def cleanup() -> None:
            _release(client, holds, data, self.hold_event(ctx))

        return _Attempt(ctx, {w.address: w.name for w in chosen}, futures=futures, collect=collect,
                        cleanup=cleanup, ranks={r: w.name for r, w in enumerate(chosen)} if world > 1 else None)

    def final_model(self, outcome: _Outcome) -> Any:
        model = _build_module(self.model_spec)
        model.load_state_dict(outcome.model)
        return model.cpu().eval()
