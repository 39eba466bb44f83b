"""A tuning request, checked: data ready to scatter, the search space, Optuna's sampler and pruner.

:func:`prepare` checks everything that can be checked before a study is opened
(kind, data, space, sampler, pruner, metric, direction, sites) and returns a
:class:`Plan` that :func:`lepton_lab.ml.tune.run` drives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .search_space import grid_of, parse_space
from .train import NAME, OPTIMIZERS, _as_table, _detect_task, _fingerprint, _split_indices, _take

__all__ = ["KINDS", "SAMPLERS", "PRUNERS", "DIRECTIONS", "Plan", "prepare", "make_sampler", "make_pruner",
           "check_budget"]

KINDS = ("xgboost", "torch")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
#: The holdout metrics a task has, the first its default.
METRICS = {"binary": ("auc", "accuracy"), "multiclass": ("accuracy",), "regression": ("rmse",)}
MAXIMIZED = {"auc", "accuracy"}
#: Parameters of a torch trial that are training options; the others go to the model factory.
TORCH_OPTIONS = ("lr", "batch_size", "epochs", "optimizer")
#: Names of the XGBoost round count in a search space.
ROUNDS = ("rounds", "num_boost_round", "n_estimators")


@dataclass
class Plan:
    """A checked tuning request: data ready to scatter, the space, and the Optuna sampler and pruner."""

    kind: str
    name: str
    space: dict[str, Any]
    metric: str
    direction: str
    sampler_name: str
    pruner_name: str
    sampler: Any
    pruner: Any
    task: Any
    schema: dict[str, Any]
    arrays: tuple[Any, Any, Any, Any]
    fingerprint: Any
    categorical: bool
    sites: list[str]
    seed: int
    steps: int
    params: dict[str, Any] = field(default_factory=dict)
    torch: dict[str, Any] = field(default_factory=dict)


def check_choices(sampler: str, pruner: str, direction: str | None) -> None:
    """One-line ConfigErrors for an unknown sampler, pruner or direction."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"tune: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if pruner not in PRUNERS:
        raise ConfigError(f"tune: pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"tune: direction must be maximize or minimize, got {direction!r}")


def prepare(kind: str, *, data: Any, target: Any = None, space: Any, name: str = "study",
            metric: str | None = None, direction: str | None = None, sampler: str = "tpe",
            pruner: str = "median", rounds: int = 100, params: dict[str, Any] | None = None,
            model: Any = None, epochs: int = 5, batch_size: int = 64, lr: float = 1e-3,
            optimizer: str = "adam", site: str | list[str] = "cloud", test_size: float = 0.2,
            seed: int = 0) -> Plan:
    """Check a tuning request and get it ready; every mistake is a one-line ConfigError.

    ``site`` is a site name or kind, several of them (a list, or comma-separated), the
    trials going to whichever has a free worker.
    """
    kind = {"pytorch": "torch"}.get(str(kind).lower(), str(kind).lower())
    if kind not in KINDS:
        raise ConfigError(f"tune: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"tune: study name must be letters, digits, '_', '-' or '.', starting with a letter, "
                          f"at most 64 characters; got {name!r}")
    check_choices(sampler, pruner, direction)
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"tune: params must be a dict of fixed xgboost parameters, got {type(params).__name__}")
    for label, value in (("rounds", rounds), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"tune: {label} must be a whole number >= 1, got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"tune: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not test_size > 0 \
            or (isinstance(test_size, float) and test_size >= 1):
        raise ConfigError(f"tune: test_size must be a fraction in (0, 1) or a row count, got {test_size!r}")
    sites = [x.strip() for x in site.split(",")] if isinstance(site, str) else [str(x) for x in site or ()]
    if not sites or not all(sites):
        raise ConfigError(f"tune: site must name a site or kind (or several, comma-separated), got {site!r}")
    dists = parse_space(space)
    table = _as_table(kind, data, target)
    task = _detect_task(table, params)
    metric = metric or METRICS[task.kind][0]
    if metric not in METRICS[task.kind]:
        raise ConfigError(f"tune: metric for a {task.kind} target is one of {', '.join(METRICS[task.kind])}, "
                          f"got {metric!r}")
    direction = direction or ("maximize" if metric in MAXIMIZED else "minimize")
    schema = table.schema(task)
    fingerprint = _fingerprint(table.header(), table.X, table.y, table.dask, table.frame)
    table.encode(task)
    X, y = table.X, table.y
    if table.dask:
        import dask

        X, y = dask.compute(X, y)
    if kind == "torch" or not hasattr(X, "columns"):
        X = np.asarray(X, dtype=np.float32) if kind == "torch" else np.asarray(X)
    y = np.asarray(y)
    train_idx, test_idx = _split_indices(len(y), test_size, seed)
    arrays = (_take(X, train_idx), y[train_idx], _take(X, test_idx), y[test_idx])
    torch_opts: dict[str, Any] = {}
    if kind == "torch":
        if model is None:
            raise ConfigError("tune torch: pass model= (an nn.Module, a model spec, or a function whose "
                              "keyword arguments are tuned)")
        extra = [k for k in dists if k not in TORCH_OPTIONS]
        if extra and (not callable(model) or _is_module(model)):
            raise ConfigError(f"tune torch: {', '.join(extra)} are not training options "
                              f"({', '.join(TORCH_OPTIONS)}); pass model= a function taking them")
        torch_opts = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": float(lr),
                      "optimizer": optimizer}
        steps = max([epochs] + [_high(dists[k]) for k in dists if k == "epochs"])
    else:
        rounds_keys = [k for k in dists if k in ROUNDS]
        steps = max([rounds] + [_high(dists[k]) for k in rounds_keys])
    return Plan(kind=kind, name=name, space=dists, metric=metric, direction=direction, sampler_name=sampler,
                pruner_name=pruner, sampler=make_sampler(sampler, dists, seed),
                pruner=make_pruner(pruner, steps), task=task, schema=schema, arrays=arrays,
                fingerprint=fingerprint, categorical=table.categorical, sites=sites, seed=seed, steps=steps,
                params=dict(params or {}, rounds=rounds), torch=torch_opts)


def _is_module(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") or hasattr(obj, "state_dict")


def _high(dist: Any) -> int:
    return int(getattr(dist, "high", 0) or max(c for c in dist.choices if isinstance(c, (int, float))))


def make_sampler(name: str, space: dict[str, Any], seed: int) -> Any:
    """The Optuna sampler called ``name`` (``tpe``, ``random``, ``grid``), seeded."""
    import optuna

    if name == "grid":
        # Optuna's grid sampler ends an ``optimize`` loop when the grid is walked; with
        # ask-and-tell there is no loop to end (the runner stops at the grid's size).
        grid = type("LeptonGridSampler", (optuna.samplers.GridSampler,),
                    {"after_trial": lambda self, study, trial, state, values: None})
        return grid(grid_of(space), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, steps: int) -> Any:
    """The Optuna pruner called ``name`` for trials of ``steps`` rounds or epochs.

    ``median`` prunes a trial whose metric is worse than the median of earlier
    trials at the same step, once 4 trials have finished and past the first tenth
    of the steps; ``halving`` is asynchronous successive halving, ``hyperband``
    Hyperband over 1..``steps``; ``none`` never prunes.
    """
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, steps // 10))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, steps // 16))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps)
    return optuna.pruners.NopPruner()


def check_budget(trials: Any, timeout: Any) -> None:
    """A ConfigError unless ``trials`` is a whole number >= 1 and ``timeout`` None or positive seconds."""
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ConfigError(f"tune: trials must be a whole number >= 1, got {trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ConfigError(f"tune: timeout must be a positive number of seconds, got {timeout!r}")
