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

The package's modules: :mod:`.data` (arguments, data, holdout), :mod:`.sites` (workers,
thread-borrowing holds, process tuning), :mod:`.shm` (shared memory), :mod:`.job` (an
attempt and what the kinds share), :mod:`.supervisor` (restarts), :mod:`.xgboost` (the XGBoost job
and its choice of path; :mod:`.xgb_single`, :mod:`.xgb_distributed`, :mod:`.xgb_split`,
:mod:`.xgb_params`, :mod:`.xgb_progress`), :mod:`.torch` and :mod:`.result`.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from typing import Any, Callable

from ... import config
from ...errors import ConfigError
from .. import progress as _progress
from ..checkpoints import Checkpoints as _Checkpoints
from .data import KINDS as KINDS
from .data import NAME as NAME
from .data import OPTIMIZERS as OPTIMIZERS
from .data import STRATEGIES as STRATEGIES
from .data import _as_table as _as_table
from .data import _check_args, _DaskFingerprint
from .data import _detect_task as _detect_task
from .data import _fingerprint as _fingerprint
from .data import _split_indices as _split_indices
from .data import _take as _take
from .job import _Background, _Context, _Job
from .result import TrainingError as TrainingError
from .result import TrainResult as TrainResult
from .sites import _openmp_threads as _openmp_threads
from .sites import _Site as _Site
from .supervisor import STALL_TIMEOUT, _supervise
from .torch import _TorchJob as _TorchJob
from .xgboost import _XGBoostJob

__all__ = ["TrainResult", "TrainingError", "train"]


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
    early_stopping: int | None = None,
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
    and eval metric follow the target unless given). ``early_stopping=N`` sets a
    tenth of the training rows aside as a validation set and stops when its first
    eval metric has not improved for N rounds; the model keeps its
    ``best_iteration``, and ``compress(result, trees="best")`` cuts it there. ``strategy`` ``"auto"``
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
    if early_stopping is not None and (kind != "xgboost" or isinstance(early_stopping, bool)
                                       or not isinstance(early_stopping, int) or early_stopping < 1):
        raise ConfigError("train: early_stopping is for xgboost, a number of rounds >= 1; "
                          f"got {early_stopping!r} for {kind}")
    if stall_timeout is not None and not (isinstance(stall_timeout, (int, float)) and stall_timeout > 0):
        raise ConfigError(f"train: stall_timeout must be a positive number of seconds or None, got {stall_timeout!r}")
    site_view = _Site(client, site)
    site_view.workers()  # a clear error now if the site has no workers
    table = _as_table(kind, data, target)
    task = _detect_task(table, params)
    schema = table.schema(task)
    # Hash the user's data (before labels are encoded) while the workers train: sha256
    # releases the GIL on large buffers; Dask data is hashed where it lives.
    fingerprint: _Background | _DaskFingerprint = (
        _DaskFingerprint(client, table.header(), table.X, table.y, table.frame) if table.dask
        else _Background(functools.partial(_fingerprint, table.header(), table.X, table.y, False, table.frame)))
    table.encode(task)
    checkpoints = _Checkpoints(checkpoint_dir if checkpoint_dir else
                               config.home() / "checkpoints" / name, checkpoint_every)
    run = uuid.uuid4().hex[:10]
    checkpoints.reset(run)
    ctx = _Context(client=client, name=name, site=site_view, run=run, table=table, task=task,
                   checkpoints=checkpoints, seed=seed, test_size=test_size,
                   topic=_progress.topic_for(name), job=f"train-{name}")
    if kind == "xgboost":
        job: _Job = _XGBoostJob(ctx, rounds=rounds, params=params or {}, strategy=strategy,
                                workers=workers, early_stopping=early_stopping)
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
