"""The tuning verb of the public API: hyper-parameter search on the cluster, studies kept per team.

``lepton_lab.tune`` (and ``%lepton tune``) lands here: it resolves the cluster,
the sites (the planner's choice when none is named), the team and the user, opens
the study through the study service (policy, audit) and hands the search to
:mod:`lepton_lab.ml.tune`, or, for ``"federate"``, to
:mod:`lepton_lab.ml.tune_federated` with the dataset's privacy ledger.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, NotFound
from .session import place, session

__all__ = ["tune"]


def tune(
    kind: str,
    *,
    data: Any = None,
    space: Any,
    target: Any = None,
    study: str | None = None,
    team: str | None = None,
    trials: int = 20,
    timeout: float | None = None,
    direction: str | None = None,
    metric: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    site: str | list[str] | None = None,
    view: bool | None = None,
    progress: bool = True,
    client: Any = None,
    **kwargs: Any,
):
    """Hyper-parameter search with Optuna on the cluster; the best trial as a training result.

    ``space`` is text such as ``"max_depth=int:2..8 eta=float:0.01..0.3:log"`` or a
    dict (see :mod:`lepton_lab.ml.search_space`). One trial runs per worker of
    ``site`` (a site or kind, or several; without it the planner picks the sites and
    says so in one line); each reports its holdout ``metric`` per round/epoch and the
    ``pruner`` (``median``, ``halving``, ``hyperband``, ``none``) stops bad ones.
    ``sampler``: ``tpe`` (default), ``random``, ``grid``. The study ``study`` is
    stored for ``team`` (default ``LEPTON_TEAM``, else the user's one team) and
    continued when run again: ``trials`` counts its finished trials, earlier
    ones included; ``timeout`` (s) stops asking for new trials. Other keywords
    are those of :func:`train` (``rounds``, ``params``, ``model``, ``epochs``,
    ``batch_size``, ``lr``, ``optimizer``, ``test_size``, ``seed``). Returns a
    :class:`~lepton_lab.ml.tune_result.TuneResult` that ``compress`` and
    ``publish`` take; its lineage names the study and the trial.

    ``kind="federate"`` searches over :func:`federate` (``model``, ``loader``,
    ``sites``, ``eval_data`` as there; the space may hold ``lr``, ``local_epochs``,
    ``batch_size``, ``mu``, ``rounds``, ``noise_multiplier``, ``clip``): each
    trial's ε is charged to ``dataset``'s privacy ledger before it runs, and the
    search stops before the policy's budget would be exceeded (see
    :mod:`lepton_lab.services.privacy`). It returns the best trial's
    ``FederatedResult``, its lineage naming the study, trial and ε spent.
    """
    import time as _time

    from .ml import tune as _tune

    _tune.check_budget(trials, timeout)
    if client is None:
        try:
            client = session().get().client
        except NotFound:
            raise ConfigError("tune: no cluster to run the trials on; start one with lepton_lab.up() "
                              "or pass client=") from None
    name = study or f"{str(kind).lower()}-{_time.strftime('%Y%m%d-%H%M%S')}"
    if str(kind).lower() in ("federate", "federated"):
        return _tune_federated(space=space, study=name, team=team, trials=trials, timeout=timeout,
                               direction=direction, metric=metric, sampler=sampler, pruner=pruner,
                               client=client, progress=progress, **kwargs)
    unknown = sorted(set(kwargs) - {"rounds", "params", "model", "epochs", "batch_size", "lr", "optimizer",
                                    "test_size", "seed"})
    if unknown:
        raise ConfigError(f"tune {kind}: unknown option(s) {', '.join(unknown)}")
    if site is None:
        from .cluster.placement import JobRequest
        from .cluster.workers import workers_now

        slots = len(workers_now(client))
        site = _auto_place(JobRequest("tune", workers=max(1, min(int(trials), slots))), client).sites
    plan = _tune.prepare(kind, data=data, target=target, space=space, name=name, metric=metric,
                         direction=direction, sampler=sampler, pruner=pruner, site=site, **kwargs)
    team, opened = _open_study(team, name, direction=plan.direction, sampler=plan.sampler, pruner=plan.pruner)
    live = None
    if view or (view is None and _in_kernel()):
        from IPython.display import display

        from .ml.tune_view import StudyView

        live = StudyView(name, plan.metric, plan.direction)
        display(live)
    return _tune.run(plan, opened, client=client, trials=trials, timeout=timeout, team=team,
                     progress=progress, view=live)


def _tune_federated(*, space: Any, study: str, team: str | None, trials: int, timeout: float | None,
                    direction: str | None, metric: str | None, sampler: str, pruner: str, client: Any,
                    progress: bool, dataset: str | None = None, sites: Any = None, seed: int = 0,
                    rounds: int = 5, **kwargs: Any):
    """``tune("federate", ...)``: trials of federated training, each charged to ``dataset``'s privacy budget.

    The study and the ledger are the services': over REST the server's (its policy's budget, its home),
    in-process this user's home."""
    import functools
    import inspect

    from .ml.federated import federate as _federate
    from .ml.tune_federated import check_space, run_federated
    from .ml.tune_plan import check_choices, make_pruner, make_sampler
    from .services.privacy import check_dataset

    for needed in ("model", "loader", "eval_data"):
        if kwargs.get(needed) is None:
            raise ConfigError(f"tune federate: pass {needed}= (as for federate)")
    known = (set(inspect.signature(_federate).parameters) - {"client", "dp", "progress", "on_round"}) \
        | {"noise_multiplier", "clip", "delta"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"tune federate: unknown option(s) {', '.join(unknown)}")
    if not dataset:
        raise ConfigError("tune federate: pass dataset= (the name its privacy budget is kept under)")
    check_dataset(dataset)  # a bad dataset name is an error before a study is opened
    check_choices(sampler, pruner, direction)
    dists = check_space(space)
    if sites is None:
        from .cluster.placement import JobRequest

        sites = _auto_place(JobRequest("federate"), client).sites
    transport = session().transport
    team, opened = _open_study(team, study, direction=direction or "maximize",
                               sampler=make_sampler(sampler, dists, seed), pruner=make_pruner(pruner, rounds))
    return run_federated(opened, space=dists, sites=sites, client=client, trials=trials, timeout=timeout,
                         metric=metric or "accuracy", progress=progress, seed=seed, rounds=rounds,
                         charge=functools.partial(transport.privacy_charge, team, dataset), **kwargs)


def _open_study(team: str | None, name: str, *, direction: str, sampler: Any, pruner: Any) -> tuple[str, Any]:
    """``(team, study)``: kept by the services this kernel reaches over REST when it does (a Jupyter
    server's, the team deployment's control plane), else in this process's own home, for its user."""
    import os

    return session().transport.study(team or os.environ.get("LEPTON_TEAM"), name, direction=direction,
                                      sampler=sampler, pruner=pruner)


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (a frontend that can show widgets)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _auto_place(request: Any, client: Any):
    """The planner's choice for the trials, said in one line."""
    handle = next((h for h in session().handles.values() if not h.closed and h.client is client), None)
    choice = place(request, client, handle)
    print(choice.line())
    return choice
