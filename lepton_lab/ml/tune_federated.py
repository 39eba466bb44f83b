"""Hyper-parameter search over federated training, each trial's privacy cost charged before it runs.

A trial is one :func:`lepton_lab.ml.federated.federate` run across the sites
(trials run one after another: each takes every site). The search space may
hold federate options (``lr``, ``local_epochs``, ``batch_size``, ``mu``,
``rounds``) and differential-privacy ones (``noise_multiplier``, ``clip``).
Before a trial starts, its mechanism (noise multiplier, sampling rate, rounds)
is charged to the dataset's privacy ledger through ``charge``; when the ledger
refuses (the policy's budget would be exceeded), the trial is not run, the
search stops there, and the refusal is the reason the result gives.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..errors import ConfigError, PermissionDenied
from .search_space import describe, parse_space
from .tune_plan import DIRECTIONS, make_sampler

__all__ = ["FEDERATE_OPTIONS", "DP_OPTIONS", "run_federated"]

FEDERATE_OPTIONS = ("lr", "local_epochs", "batch_size", "mu", "rounds")
DP_OPTIONS = ("noise_multiplier", "clip")


def check_space(space: Any) -> dict[str, Any]:
    """The parsed space; ConfigError for a name that is neither a federate nor a privacy option."""
    dists = parse_space(space)
    unknown = [k for k in dists if k not in FEDERATE_OPTIONS + DP_OPTIONS]
    if unknown:
        raise ConfigError(f"tune federate: {', '.join(unknown)} cannot be tuned; the space takes "
                          f"{', '.join(FEDERATE_OPTIONS + DP_OPTIONS)}")
    return dists


def run_federated(study: Any, *, space: dict[str, Any], model: Any, loader: Callable, sites: Any,
                  eval_data: tuple[Any, Any], client: Any, charge: Callable[..., dict[str, Any]],
                  trials: int, timeout: float | None = None, rounds: int = 5, noise_multiplier: float = 1.0,
                  clip: float = 1.0, delta: float = 1e-5, metric: str = "accuracy",
                  progress: bool = True, **federate_kwargs: Any) -> Any:
    """Run ``study`` over federated trials until it has ``trials`` finished ones, ``timeout`` passes or the
    privacy budget would be exceeded; the best trial's :class:`FederatedResult`, its lineage naming the
    study, the trial and the privacy spent (``.tuning``)."""
    import optuna

    from .federated import federate
    from .privacy import DPConfig

    if study.direction.name.lower() not in DIRECTIONS:
        raise ConfigError("tune federate: a study of one objective is needed")
    state = optuna.trial.TrialState
    finished = len(study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max(0, trials - finished), desc=f"tune {study.study_name}", unit="trial")
    best: tuple[float, Any, Any, dict[str, Any]] | None = None
    stopped = ""
    ran = 0
    try:
        while finished < trials and (deadline is None or time.monotonic() < deadline):
            trial = study.ask(space)
            p = trial.params
            dp = DPConfig(clip=float(p.get("clip", clip)), noise_multiplier=float(p.get("noise_multiplier",
                                                                                        noise_multiplier)),
                          delta=delta)
            n_rounds = int(p.get("rounds", rounds))
            fraction = float(federate_kwargs.get("fraction", 1.0))
            try:
                spend = charge(noise_multiplier=dp.noise_multiplier, sample_rate=fraction if fraction < 1 else 1.0,
                               steps=n_rounds, what=f"study {study.study_name} trial {trial.number}")
            except PermissionDenied as e:
                trial.set_user_attr("refused", str(e))
                study.tell(trial, state=state.FAIL)
                stopped = str(e)
                break
            trial.set_user_attr("epsilon", spend["epsilon"])
            trial.set_user_attr("epsilon_total", spend["total"])
            opts = {k: p[k] for k in FEDERATE_OPTIONS if k in p and k != "rounds"}
            try:
                result = federate(model, loader=loader, sites=sites, rounds=n_rounds, dp=dp, eval_data=eval_data,
                                  client=client, progress=False, on_round=_reporter(trial, metric),
                                  **{**federate_kwargs, **opts})
            except _Pruned:
                # Charged in full all the same: the ledger counts what a trial may spend, before it runs.
                study.tell(trial, state=state.PRUNED)
                finished += 1
                ran += 1
                if bar is not None:
                    bar.update(1)
                continue
            except BaseException:
                study.tell(trial, state=state.FAIL)
                raise
            value = (result.history[-1].global_metrics or {}).get(metric) if result.history else None
            if value is None:
                study.tell(trial, state=state.FAIL)
                raise ConfigError(f"tune federate: no {metric!r} in the global metrics; pass eval_data=(X, y)")
            study.tell(trial, float(value))
            finished += 1
            ran += 1
            if bar is not None:
                bar.update(1)
            better = best is None or (value > best[0] if study.direction.name == "MAXIMIZE" else value < best[0])
            if better:
                best = (float(value), trial.number, result, spend)
    finally:
        if bar is not None:
            bar.close()
    if best is None:
        if stopped:
            raise PermissionDenied(stopped)
        raise ConfigError(f"tune federate: study {study.study_name} completed no trial this time "
                          f"({ran} run, all pruned; it has {finished} finished); raise trials= to go on")
    value, number, result, spend = best
    total = max((t.user_attrs.get("epsilon_total", 0.0) for t in study.get_trials(deepcopy=False)), default=0.0)
    result.tuning = {"study": study.study_name, "trial": number, "value": value, "metric": metric,
                     "params": dict(study.trials[number].params), "space": describe(space),
                     "epsilon_trial": spend["epsilon"], "epsilon_total": total, "delta": spend["delta"],
                     "budget": spend["budget"], "ran_now": ran, "stopped": stopped}
    result.lineage = {**result.lineage, "tuning": result.tuning}
    return result


class _Pruned(Exception):
    """Raised from a round's callback: the pruner stopped this trial."""


def _reporter(trial: Any, metric: str) -> Callable[[Any], None]:
    def on_round(record: Any) -> None:
        value = (record.global_metrics or {}).get(metric)
        if value is not None:
            trial.report(float(value), int(record.round))
            if trial.should_prune():
                raise _Pruned()

    return on_round


def sampler_for(name: str, space: dict[str, Any], seed: int) -> Any:
    """The Optuna sampler of a federated search (trials run one at a time, so TPE sees every result)."""
    return make_sampler(name, space, seed)
