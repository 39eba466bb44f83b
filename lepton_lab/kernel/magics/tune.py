"""``%lepton tune xgboost|torch --space ...``: hyper-parameter search, the best trial bound in the notebook.

The option choices come from :mod:`lepton_lab.ml.tune_plan`, read when a line is parsed or
help is shown, not when this module is imported.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from IPython.display import display

from ... import api
from ...errors import ConfigError
from .arguments import add_verb, choices_later
from .train import _fraction_or_count, optimizers, training_inputs


def _plan(name: str) -> tuple[str, ...]:
    from ...ml import tune_plan

    return tuple(getattr(tune_plan, name))


def add_parsers(verbs: Any) -> None:
    """Add ``%lepton tune`` to ``%lepton``'s sub-parsers."""
    p = add_verb(verbs, "tune",
                 "hyper-parameter search with Optuna on a site's workers; binds the best to --name", _tune)
    choices_later(p.add_argument("kind"), lambda: _plan("KINDS") + ("pytorch", "federate"))
    p.add_argument("--data", default=None, help="a DataFrame variable, or X,y (not for federate)")
    p.add_argument("--target", default=None, help="label column (or a variable holding the labels)")
    p.add_argument("--space", required=True, help="e.g. 'max_depth=int:2..8 eta=float:0.01..0.3:log'")
    p.add_argument("--study", default=None, help="study name: the same name continues a stored study")
    p.add_argument("--team", default=None, help="team that keeps the study (default LEPTON_TEAM)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should have")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    choices_later(p.add_argument("--direction", default=None), lambda: _plan("DIRECTIONS"))
    p.add_argument("--metric", default=None, help="holdout metric: auc, accuracy or rmse (default by target)")
    choices_later(p.add_argument("--sampler", default="tpe"), lambda: _plan("SAMPLERS"))
    choices_later(p.add_argument("--pruner", default="median"), lambda: _plan("PRUNERS"))
    p.add_argument("--name", default="tuned", help="variable for the best trial's result")
    p.add_argument("--site", default=None, help="site(s) or kind for the trials (default: the planner's choice)")
    p.add_argument("--cluster", default=None, help="cluster name (default: the current one)")
    p.add_argument("--rounds", type=int, default=None, help="boosting rounds (100), or federated rounds (5)")
    p.add_argument("--params", default=None, help="fixed xgboost parameters as JSON")
    p.add_argument("--model", default=None, help="a torch nn.Module variable, or a function of tuned kwargs")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    choices_later(p.add_argument("--optimizer", default="adam"), optimizers)
    p.add_argument("--test-size", dest="test_size", type=_fraction_or_count, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    fed = p.add_argument_group("federate")
    fed.add_argument("--loader", default=None, help="federate: a function loader(site) -> (X, y)")
    fed.add_argument("--sites", default=None, help="federate: site names, comma-separated")
    fed.add_argument("--eval", default=None, help="federate: an (X, y) variable for the global metric")
    fed.add_argument("--dataset", default=None, help="federate: the dataset whose privacy budget pays")
    fed.add_argument("--dp-noise", dest="dp_noise", type=float, default=1.0, help="federate: noise multiplier")
    fed.add_argument("--dp-clip", dest="dp_clip", type=float, default=1.0, help="federate: L2 clip per site")
    fed.add_argument("--dp-delta", dest="dp_delta", type=float, default=1e-5)
    fed.add_argument("--no-secure", dest="secure", action="store_false", help="federate: plain aggregation")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-view", dest="view", action="store_false", default=None)


def _tune(magics: Any, a: argparse.Namespace) -> None:
    ns = magics.shell.user_ns
    if a.kind == "federate":
        return _tune_federated(magics, a)
    if a.data is None:
        raise ConfigError(f"%lepton tune {a.kind} needs --data (a DataFrame variable, or X,y)")
    data, target, params, model = training_inputs(ns, a)
    result = api.tune(a.kind, data=data, target=target, space=a.space, study=a.study, team=a.team,
                      trials=a.trials, timeout=a.timeout, direction=a.direction, metric=a.metric,
                      sampler=a.sampler, pruner=a.pruner, site=a.site, view=a.view, progress=a.progress,
                      client=api.current(a.cluster).client, rounds=100 if a.rounds is None else a.rounds,
                      params=params, model=model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                      optimizer=a.optimizer, test_size=a.test_size, seed=a.seed)
    var = a.name if a.name.isidentifier() else re.sub(r"\W", "_", a.name)
    ns[var] = result
    display(result)
    print(f"study {result.study_name} (team {result.team}): best trial #{result.trial} "
          f"{result.metric}={result.value:.4g}; bound to `{var}` ({var}.model is its model)")


def _tune_federated(magics: Any, a: argparse.Namespace) -> None:
    ns = magics.shell.user_ns

    def var(name: str | None, what: str) -> Any:
        if name is None:
            raise ConfigError(f"%lepton tune federate needs --{what}")
        if name not in ns:
            raise ConfigError(f"no variable {name!r} in the notebook for --{what}")
        return ns[name]

    result = api.tune("federate", model=var(a.model, "model"), loader=var(a.loader, "loader"),
                      eval_data=var(a.eval, "eval"), sites=a.sites.split(",") if a.sites else None,
                      dataset=a.dataset, space=a.space, study=a.study, team=a.team, trials=a.trials,
                      timeout=a.timeout, direction=a.direction, metric=a.metric, sampler=a.sampler,
                      pruner=a.pruner, progress=a.progress, client=api.current(a.cluster).client,
                      rounds=5 if a.rounds is None else a.rounds, noise_multiplier=a.dp_noise, clip=a.dp_clip,
                      delta=a.dp_delta, secure=a.secure, seed=a.seed)
    var_name = a.name if a.name.isidentifier() else re.sub(r"\W", "_", a.name)
    ns[var_name] = result
    t = result.tuning
    stopped = f"; stopped: {t['stopped']}" if t["stopped"] else ""
    print(f"study {t['study']}: best trial #{t['trial']} {t['metric']}={t['value']:.4g}, "
          f"ε spent {t['epsilon_total']:.3f} at δ={t['delta']:g}{stopped}; bound to `{var_name}`")
