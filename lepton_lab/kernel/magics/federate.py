"""``%lepton federate ...``: federated training on edge sites, the result bound in the notebook.

The option choices come from :mod:`lepton_lab.ml.federated` (which imports torch), read when
a line is parsed or help is shown, not when this module is imported.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.display import display

from ... import api
from ...errors import ConfigError
from .arguments import add_verb, choices_later


def _strategies() -> tuple[str, ...]:
    from ...ml.federated import STRATEGIES

    return tuple(STRATEGIES)


def _optimizers() -> tuple[str, ...]:
    from ...ml.federated import OPTIMIZERS

    return tuple(OPTIMIZERS)


def add_parsers(verbs: Any) -> None:
    """Add ``%lepton federate`` to ``%lepton``'s sub-parsers."""
    p = add_verb(verbs, "federate",
                 "federated training on edge sites (FedAvg/FedProx, secure aggregation, DP)", _federate)
    p.add_argument("--model", required=True, help="name of a torch.nn.Module in the notebook")
    p.add_argument("--loader", required=True, help="name of a function loader(site) -> (X, y)")
    p.add_argument("--sites", default=None,
                   help="site names, comma-separated (default: the planner's choice, every edge site)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    choices_later(p.add_argument("--strategy", default="fedavg"), _strategies)
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    choices_later(p.add_argument("--optimizer", default="sgd"), _optimizers)
    p.add_argument("--fraction", type=float, default=1.0, help="share of sites sampled per round")
    p.add_argument("--min-sites", type=int, default=2)
    sec = p.add_mutually_exclusive_group()
    sec.add_argument("--secure", dest="secure", action="store_true", default=True,
                     help="secure aggregation (the default)")
    sec.add_argument("--no-secure", dest="secure", action="store_false", help="plain aggregation")
    p.add_argument("--dp-noise", type=float, default=None, help="noise multiplier: turns differential privacy on")
    p.add_argument("--dp-clip", type=float, default=1.0, help="L2 clip of each site's update (with --dp-noise)")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="δ for which ε is reported (with --dp-noise)")
    p.add_argument("--eval", default=None, help="name of an (X, y) tuple in the notebook for the global metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-timeout", type=float, default=60)
    p.add_argument("--cluster", default=None, help="cluster name (default: the current one)")
    p.add_argument("--name", default=None, help="bind the FederatedResult to this name (default: federated)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _lookup(ns: dict, name: str, what: str) -> Any:
    if name not in ns:
        raise ConfigError(f"no {what} called {name!r} in the notebook; define it first")
    return ns[name]


def _federate(magics: Any, a: argparse.Namespace) -> None:
    from ...ml.privacy import DPConfig

    ns = magics.shell.user_ns
    model = _lookup(ns, a.model, "model")
    loader = _lookup(ns, a.loader, "loader")
    eval_data = _lookup(ns, a.eval, "evaluation data") if a.eval else None
    dp = DPConfig(clip=a.dp_clip, noise_multiplier=a.dp_noise, delta=a.dp_delta) if a.dp_noise is not None else None
    result = api.federate(model, loader=loader, sites=a.sites, rounds=a.rounds, local_epochs=a.local_epochs,
                          strategy=a.strategy, mu=a.mu, lr=a.lr, batch_size=a.batch_size, optimizer=a.optimizer,
                          fraction=a.fraction, min_sites=a.min_sites, secure=a.secure, dp=dp, eval_data=eval_data,
                          progress=not a.quiet, client=api.current(a.cluster).client, seed=a.seed,
                          round_timeout=a.round_timeout, name=a.name)
    bound = a.name or "federated"
    ns[bound] = result
    print(f"{result!r}; bound to `{bound}`")
    display(result)
