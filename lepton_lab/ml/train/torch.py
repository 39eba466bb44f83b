"""The PyTorch training: one worker, or data-parallel ranks (``DistributedDataParallel``) on several.

Each rank runs in a child process of its worker (:mod:`lepton_lab.ml.torch_rank`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import dask
import numpy as np

from ...errors import ConfigError
from ..torch_rank import build_module as _build_module
from ..torch_rank import run_rank as _run_rank
from .data import _split_indices
from .job import COLLECTIVE_TIMEOUT, _Attempt, _Context, _Job, _Outcome
from .sites import _free_port, _release, _resources

logger = logging.getLogger(__name__)

#: A torch model with fewer parameters trains on one thread: more would only add overhead.
TORCH_THREADED_PARAMS = 1_000_000


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
