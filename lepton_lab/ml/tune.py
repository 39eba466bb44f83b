"""Hyper-parameter search with Optuna, one trial per worker of the sites, bad trials pruned early.

    plan = prepare("xgboost", data=(X, y), space="max_depth=int:2..8 eta=float:0.01..0.3:log")
    study = ...            # an Optuna study, opened by the services (team storage, policy)
    best = run(plan, study, client=client, trials=32)
    best.model, best.params, best.lineage

:func:`prepare` (:mod:`lepton_lab.ml.tune_plan`) checks the request and builds the
Optuna sampler and pruner; :func:`run` drives the study with ask-and-tell. Every
worker of the plan's sites holds one trial at a time (the trial takes all of its
threads; one more per site waits queued, so that a worker that finishes starts
the next at once); the data is scattered to those workers once. A trial posts
its holdout metric every few rounds or every epoch (:mod:`lepton_lab.ml.tune_trial`);
the kernel reports it to the trial and stops the trial on its worker as soon as
the pruner says so.

``trials`` counts the study's finished trials (complete or pruned), those of
earlier runs included: running a stored study again continues it. Trials an
earlier kernel left running, or that a lost worker or an interrupt cut short,
are marked failed and their parameters tried again first.
"""

from __future__ import annotations

import math
import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LeptonError, first_line
from . import tune_trial as _trial
from .search_space import describe, grid_of
from .train import TrainingError, _Site, _TorchJob
from .train.xgb_params import _xgb_params
from .tune_plan import (
    DIRECTIONS,
    KINDS,
    PRUNERS,
    ROUNDS,
    SAMPLERS,
    TORCH_OPTIONS,
    Plan,
    check_budget,
    make_pruner,
    make_sampler,
    prepare,
)
from .tune_result import TuneResult

__all__ = ["KINDS", "SAMPLERS", "PRUNERS", "DIRECTIONS", "Plan", "prepare", "run", "make_sampler", "make_pruner",
           "check_budget"]

#: Seconds between refreshes of the trials table, and of the Optuna figures.
VIEW_INTERVAL = 1.0
FIGURE_INTERVAL = 10.0
#: Seconds between two looks at the sites' workers while trials run.
WORKERS_INTERVAL = 2.0
#: Trials queued on each site beyond one per worker.
AHEAD = 1
#: About this many intermediate values are reported per XGBoost trial (every round of a short one).
REPORTS = 10
#: A study whose first trials all fail stops after this many failures (a bad parameter, say).
MAX_EARLY_FAILURES = 3


# =========================================================================== running


@dataclass
class _Running:
    trial: Any
    future: Any
    key: str
    site: str
    reported: set[int] = field(default_factory=set)
    pruned: bool = False


class _Runner:
    def __init__(self, plan: Plan, study: Any, client: Any, *, team: str, progress: bool, view: Any,
                 on_trial: Callable[[dict[str, Any]], Any] | None):
        self.plan, self.study, self.client, self.team = plan, study, client, team
        self.run_id = uuid.uuid4().hex[:8]
        self.topic = f"lepton-tune:{plan.name}"
        self.job = f"tune-{plan.name}"
        self.sites = {name: _Site(client, name) for name in plan.sites}
        self.q: queue.Queue = queue.Queue()
        self.running: dict[int, _Running] = {}
        self.best: dict[int, dict[str, Any]] = {}
        self.retried: set[int] = set()
        self.view = view
        self.on_trial = on_trial
        self.bar: Any = None
        self.progress = progress
        self.data: list[Any] = []
        self.ran = 0
        self.failures: list[str] = []
        self._workers: dict[str, list[Any]] = {}
        self._workers_at = 0.0

    # -- trials ---------------------------------------------------------------------------

    def spec(self, trial_number: int, params: dict[str, Any], nthread: int) -> dict[str, Any]:
        p = self.plan
        key = f"{self.job}-{self.run_id}-{trial_number}"
        current = next(iter(self.best.values()), None)
        spec: dict[str, Any] = {"key": key, "topic": self.topic, "run": self.run_id, "number": trial_number,
                                "metric": p.metric, "task": p.task.kind, "nthread": nthread, "seed": p.seed,
                                "direction": p.direction, "best": None if current is None else current["value"]}
        if p.kind == "xgboost":
            fixed = dict(p.params)
            rounds = fixed.pop("rounds")
            tuned = {k: v for k, v in params.items() if k not in ROUNDS}
            rounds = int(next((params[k] for k in ROUNDS if k in params), rounds))
            xgb = _xgb_params(p.task, {**fixed, **tuned}, gpu=False)
            xgb.setdefault("seed", p.seed)
            spec.update(params=xgb, rounds=rounds, categorical=p.categorical,
                        stride=max(1, round(rounds / REPORTS)))
        else:
            opts = {**p.torch, **{k: v for k, v in params.items() if k in TORCH_OPTIONS}}
            extra = {k: v for k, v in params.items() if k not in TORCH_OPTIONS}
            model = _trial.model_factory(opts["model"], extra) if extra else opts["model"]
            spec.update(model=_TorchJob._model_spec(model), epochs=int(opts["epochs"]),
                        batch_size=int(opts["batch_size"]), lr=float(opts["lr"]), optimizer=opts["optimizer"])
        return spec

    def slots(self) -> dict[str, list[Any]]:
        """Each site's workers, looked up at most every WORKERS_INTERVAL s; the first look insists."""
        now = time.monotonic()
        if not self._workers or now - self._workers_at > WORKERS_INTERVAL:
            self._workers = {name: site.workers(required=not self._workers) for name, site in self.sites.items()}
            self._workers_at = now
        return self._workers

    def all_workers(self) -> list[Any]:
        return list({w.address: w for ws in self.slots().values() for w in ws}.values())

    def pick_site(self) -> str | None:
        """The site with the most room for one more trial (free workers, plus AHEAD queued), if any."""
        room = {name: len(ws) + AHEAD - sum(1 for r in self.running.values() if r.site == name)
                for name, ws in self.slots().items() if ws}
        best = max(room, key=lambda n: room[n], default=None)
        return best if best is not None and room[best] > 0 else None

    def submit(self, trial: Any, params: dict[str, Any], site: str) -> _Running:
        """Queue a trial on ``site``: the scheduler starts it on its first worker with a free slot."""
        import dask

        fn = _trial.xgb_trial if self.plan.kind == "xgboost" else _trial.torch_trial
        share = min(w.resources.get(site, 1) for w in self.slots()[site])
        spec = self.spec(trial.number, params, max(1, int(share)))
        with dask.annotate(job=self.job):
            fut = self.client.submit(fn, *self.data, spec, key=spec["key"], pure=False, resources={site: share})
        fut.add_done_callback(lambda f: self.q.put(("done", trial.number)))
        return _Running(trial, fut, spec["key"], site)

    def on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        if isinstance(msg, dict) and msg.get("run") == self.run_id:
            self.q.put(("rows", msg))

    def report(self, msg: dict[str, Any]) -> None:
        r = self.running.get(int(msg.get("trial", -1)))
        if r is None or r.pruned:
            return
        for step, value in msg.get("rows", []):
            if int(step) not in r.reported and math.isfinite(value):
                r.trial.report(float(value), int(step))
                r.reported.add(int(step))
        if r.reported and r.trial.should_prune():
            r.pruned = True
            self.stop(r)

    def stop(self, r: _Running) -> None:
        try:
            self.client.run(_trial.stop, r.key, workers=[w.address for w in self.all_workers()], wait=False)
        except Exception:  # the worker is gone: the future fails and the trial is retried
            pass

    def finish(self, number: int) -> None:
        import optuna

        r = self.running.pop(number, None)
        if r is None:
            return
        state = optuna.trial.TrialState
        if r.future.status == "finished":
            out = r.future.result()
            r.trial.set_user_attr("worker", out.get("worker", ""))
            if out["pruned"] or r.pruned:
                self.study.tell(r.trial, state=state.PRUNED)
            elif not math.isfinite(out["value"]):
                r.trial.set_user_attr("error", f"{self.plan.metric} is not finite")
                self.study.tell(r.trial, state=state.FAIL)
                self.failures.append(f"trial {number}: {self.plan.metric} is not finite")
            else:
                r.trial.set_user_attr("metrics", out["metrics"])
                self.study.tell(r.trial, out["value"])
                self.keep_if_best(number, out)
        else:
            error = first_line(r.future.exception(), named=True) if r.future.status == "error" else r.future.status
            r.trial.set_user_attr("error", error)
            self.study.tell(r.trial, state=state.FAIL)
            if _worker_lost(r.future) and number not in self.retried:
                self.retried.add(number)
                self.study.enqueue_trial(dict(r.trial.params), skip_if_exists=False)
            else:
                self.failures.append(f"trial {number} failed: {error}")
        self.ran += 1
        if self.bar is not None:
            self.bar.update(1)
            try:
                self.bar.set_postfix({self.plan.metric: f"{self.study.best_value:.4g}"}, refresh=False)
            except ValueError:
                pass
        if self.on_trial is not None:
            self.on_trial({"number": number, "state": self.study.trials[number].state.name.lower()})

    def keep_if_best(self, number: int, out: dict[str, Any]) -> None:
        if out.get("model") is None:  # the trial knew it was no better than the best when it started
            return
        current = next(iter(self.best.values()), None)
        if current is None or (out["value"] > current["value"] if self.plan.direction == "maximize"
                               else out["value"] < current["value"]):
            self.best = {number: out}

    # -- the loop -------------------------------------------------------------------------

    def loop(self, to_run: int, deadline: float | None) -> None:
        asked = 0
        last_view = last_fig = 0.0
        while True:
            wanted = asked < to_run and (deadline is None or time.monotonic() < deadline) and not self.given_up()
            # One trial queued beyond the free slots, so that a worker that finishes starts
            # the next at once instead of waiting for this loop to ask Optuna.
            site = self.pick_site() if wanted else None
            while site is not None and asked < to_run:
                trial = self.study.ask(self.plan.space)
                self.running[trial.number] = self.submit(trial, trial.params, site)
                asked += 1
                site = self.pick_site()
            if not self.running:
                break
            try:
                kind, item = self.q.get(timeout=0.1)
            except queue.Empty:
                kind, item = "", None
            while kind:
                if kind == "rows":
                    self.report(item)
                else:
                    self.finish(item)
                try:
                    kind, item = self.q.get_nowait()
                except queue.Empty:
                    kind = ""
            now = time.monotonic()
            if self.view is not None and now - last_view >= VIEW_INTERVAL:
                figures = now - last_fig >= FIGURE_INTERVAL
                self.view.refresh(self.study, figures=figures)
                last_view, last_fig = now, now if figures else last_fig

    def given_up(self) -> bool:
        import optuna

        if len(self.failures) < MAX_EARLY_FAILURES:
            return False
        state = optuna.trial.TrialState
        return not self.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED))

    def interrupt(self) -> None:
        """Stop every running trial; they count as failed and are tried again first next time."""
        import optuna

        for r in list(self.running.values()):
            self.stop(r)
            r.future.cancel()
            r.trial.set_user_attr("error", "interrupted")
            self.study.tell(r.trial, state=optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(dict(r.trial.params), skip_if_exists=False)
        self.running.clear()


def run(plan: Plan, study: Any, *, client: Any, trials: int = 20, timeout: float | None = None,
        team: str = "", progress: bool = True, view: Any = None,
        on_trial: Callable[[dict[str, Any]], Any] | None = None) -> TuneResult:
    """Run ``study`` until it has ``trials`` finished trials (or ``timeout`` s pass); the best as a result.

    ``view`` (a :class:`~lepton_lab.ml.tune_view.StudyView`) is refreshed while
    it runs; ``on_trial({"number", "state"})`` is called as each trial ends.
    """
    import optuna

    check_budget(trials, timeout)
    started = time.perf_counter()
    runner = _Runner(plan, study, client, team=team, progress=progress, view=view, on_trial=on_trial)
    runner.slots()  # a one-line error now if a site has no worker
    workers = runner.all_workers()
    _resume(study)
    state = optuna.trial.TrialState
    finished = len(study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))
    to_run = max(0, int(trials) - finished)
    if plan.sampler_name == "grid":
        to_run = min(to_run, max(0, math.prod(len(v) for v in grid_of(plan.space).values()) - finished))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if to_run:
        runner.data = client.scatter(list(plan.arrays), broadcast=True, hash=False,
                                     workers=[w.address for w in workers])
        if progress:
            from tqdm.auto import tqdm

            runner.bar = tqdm(total=to_run, desc=f"tune {plan.name}", unit="trial", leave=True)
        client.subscribe_topic(runner.topic, runner.on_event)
        try:
            runner.loop(to_run, None if timeout is None else time.monotonic() + timeout)
        except BaseException:
            runner.interrupt()
            raise
        finally:
            client.unsubscribe_topic(runner.topic)
            if runner.bar is not None:
                runner.bar.close()
    if view is not None:
        view.refresh(study, figures=True)
    try:
        best = study.best_trial
    except ValueError:
        why = f" (first failure: {runner.failures[0]})" if runner.failures else ""
        raise TrainingError(f"tune: study {plan.name} has no complete trial yet{why}") from None
    out = runner.best.get(best.number)
    if out is None:  # the best trial ran in an earlier session: train its parameters once more
        if not runner.data:
            runner.data = client.scatter(list(plan.arrays), broadcast=True, hash=False,
                                         workers=[w.address for w in workers])
        out = _retrain(runner, best, workers)
    for f in runner.data:
        f.release()
    return _result(plan, study, best, out, team=team, ran=runner.ran, seconds=time.perf_counter() - started)


def _retrain(runner: _Runner, best: Any, workers: list[Any]) -> dict[str, Any]:
    fn = _trial.xgb_trial if runner.plan.kind == "xgboost" else _trial.torch_trial
    spec = runner.spec(best.number, dict(best.params), workers[0].nthreads)
    spec["key"] += "-best"
    spec["best"] = None  # send its model back whatever this session found
    fut = runner.client.submit(fn, *runner.data, spec, key=spec["key"], pure=False, workers=[workers[0].address],
                               allow_other_workers=False)
    try:
        out = fut.result()
    except LeptonError:
        raise
    except Exception as e:
        raise TrainingError(f"tune: retraining the best trial #{best.number} failed: "
                            + first_line(e, named=True)) from None
    if out.get("pruned"):
        raise TrainingError(f"tune: retraining the best trial #{best.number} was stopped")
    return out


def _resume(study: Any) -> None:
    """Trials an earlier kernel left running are failed, and their parameters queued to run again."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), skip_if_exists=False)


def _result(plan: Plan, study: Any, best: Any, out: dict[str, Any], *, team: str, ran: int,
            seconds: float) -> TuneResult:
    import optuna

    if plan.kind == "xgboost":
        import xgboost as xgb

        model: Any = xgb.Booster(model_file=bytearray(out["model"]))
    else:
        from .torch_rank import build_module

        params = {k: v for k, v in best.params.items() if k not in TORCH_OPTIONS}
        factory = _trial.model_factory(plan.torch["model"], params) if params else plan.torch["model"]
        model = build_module(_TorchJob._model_spec(factory))
        model.load_state_dict(out["model"])
        model = model.cpu().eval()
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    st = optuna.trial.TrialState
    result = TuneResult(
        name=plan.name, kind=plan.kind, model=model, metrics=out["metrics"], history=out["history"],
        strategy=(f"tune: best of {counts[st.COMPLETE]} complete trial(s) of study {plan.name} "
                  f"(trial #{best.number}), trained on {out['worker']} with {out.get('threads', 1)} thread(s)"),
        workers=[out["worker"]], site=",".join(plan.sites), duration_s=seconds, checkpoints="", resumed_from=None,
        data_fingerprint=plan.fingerprint, input_schema=plan.schema, task=plan.task.kind,
        classes=plan.task.classes, study_name=plan.name, trial=best.number, team=team, params=dict(best.params),
        value=float(best.value), metric=plan.metric, direction=plan.direction, sampler=plan.sampler_name,
        pruner=plan.pruner_name, space=describe(plan.space), n_complete=counts[st.COMPLETE],
        n_pruned=counts[st.PRUNED], n_failed=counts[st.FAIL], ran_now=ran)
    result.study = study
    return result


def _worker_lost(future: Any) -> bool:
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    if future.status == "cancelled":
        return True
    try:
        exc = future.exception(timeout=1)
    except (FutureCancelledError, Exception):
        return True
    return isinstance(exc, (KilledWorker, OSError)) or type(exc).__name__ in ("CommClosedError", "FutureCancelledError")
