"""The XGBoost training job: one worker process with all its host's threads, or ``xgboost.dask`` across workers.

Which of the two runs is chosen here; :mod:`.xgb_single` and :mod:`.xgb_distributed` run them.
"""

from __future__ import annotations

from typing import Any

from .job import _Attempt, _Context, _Job, _Outcome
from .shm import _SharedArrays
from .xgb_distributed import _start_distributed
from .xgb_params import _xgb_params
from .xgb_single import _place_and_submit

#: The data fits one worker when this many times its size fits in the worker's memory
#: limit: raw data, the training copy after the holdout split, the quantised matrix and
#: gradients.
MEMORY_FACTOR = 3.0
MEMORY_FRACTION = 0.6


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
            attempt, self.strategy = _place_and_submit(self, ctx, pick, borrowed, spec, shared, self.why,
                                                       self.placed)
            return attempt
        except BaseException:
            shared.cleanup()
            raise

    def _start_distributed(self, resume: dict[str, Any] | None) -> _Attempt:
        workers = self.ctx.site.workers()
        if self.n_workers:
            workers = workers[: self.n_workers]
        spec = self._spec(resume, all(w.gpu for w in workers))
        attempt, self.strategy = _start_distributed(self.ctx, workers, spec, self.total, self.early_stopping,
                                                    self.why, self.placed)
        return attempt

    def final_model(self, outcome: _Outcome) -> Any:
        import xgboost as xgb

        return xgb.Booster(model_file=bytearray(outcome.model))
