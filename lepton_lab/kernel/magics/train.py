"""``%lepton train xgboost|torch ...``: train on a site and bind the result in the notebook.

The option choices come from :mod:`lepton_lab.ml.train`, read when a line is parsed or
help is shown, not when this module is imported.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from IPython.display import display

from ... import api
from ...errors import ConfigError
from .arguments import add_verb, choices_later


def _kinds() -> tuple[str, ...]:
    from ...ml.train import KINDS

    return KINDS + ("pytorch",)


def _strategies() -> tuple[str, ...]:
    from ...ml.train import STRATEGIES

    return STRATEGIES


def optimizers() -> tuple[str, ...]:
    """The optimizers ``train`` (and ``tune``) take."""
    from ...ml.train import OPTIMIZERS

    return OPTIMIZERS


def add_parsers(verbs: Any) -> None:
    """Add ``%lepton train xgboost|torch ...`` to ``%lepton``'s sub-parsers."""
    p = add_verb(verbs, "train", "train an XGBoost or PyTorch model on a site; binds the result to --name", _train)
    choices_later(p.add_argument("kind"), _kinds)
    p.add_argument("--data", required=True, help="a DataFrame variable, or X,y")
    p.add_argument("--target", default=None, help="label column (or a variable holding the labels)")
    p.add_argument("--name", required=True, help="result variable, job and checkpoint name")
    p.add_argument("--site", default=None, help="a site name (default: the planner's choice)")
    p.add_argument("--cluster", default=None, help="cluster name (default: the current one)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--params", default=None, help="xgboost parameters as JSON")
    choices_later(p.add_argument("--strategy", default="auto"), _strategies)
    p.add_argument("--early-stopping", dest="early_stopping", type=int, default=None, metavar="N",
                   help="xgboost: stop when the validation metric has not improved for N rounds")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=10)
    p.add_argument("--test-size", dest="test_size", type=_fraction_or_count, default=0.2,
                   help="holdout: a fraction such as 0.2, or a row count")
    p.add_argument("--model", default=None, help="a torch nn.Module variable (or a model spec)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    choices_later(p.add_argument("--optimizer", default="adam"), optimizers)
    p.add_argument("--workers", type=int, default=None, help="torch: data-parallel ranks")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, default=2)
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _train(magics: Any, a: argparse.Namespace) -> None:
    ns = magics.shell.user_ns
    data, target, params, model = training_inputs(ns, a)
    client = api.current(a.cluster).client
    result = api.train(a.kind, data=data, target=target, name=a.name, site=a.site, rounds=a.rounds,
                       params=params, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                       optimizer=a.optimizer, model=model, workers=a.workers,
                       early_stopping=a.early_stopping,
                       checkpoint_every=a.checkpoint_every, test_size=a.test_size, progress=a.progress,
                       client=client, strategy=a.strategy, max_restarts=a.max_restarts)
    var = a.name if a.name.isidentifier() else re.sub(r"\W", "_", a.name)
    ns[var] = result
    display(result)
    print(f"bound the result to `{var}` ({var}.model is the trained model)")


def training_inputs(ns: dict[str, Any], a: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """``--data``, ``--target``, ``--params`` and ``--model`` of a training magic, looked up in ``ns``."""
    data, target = data_and_target(ns, a.data, a.target)
    params = None
    if a.params:
        try:
            params = json.loads(a.params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--params is not valid JSON ({e.msg} at column {e.colno}); "
                              """write it like '{"max_depth": 6}'""") from None
        if not isinstance(params, dict):
            raise ConfigError("--params must be a JSON object such as '{\"max_depth\": 6}'")
    model = None
    if a.model is not None:
        if a.model not in ns:
            raise ConfigError(f"no variable {a.model!r} in the notebook for --model")
        model = ns[a.model]
    return data, target, params, model


def data_and_target(ns: dict[str, Any], data: str, target: str | None) -> tuple[Any, Any]:
    """``--data`` (a variable, or X,y) and ``--target`` (a column, or a variable of labels) from ``ns``."""
    value = _lookup_data(ns, data)
    if target is not None and not hasattr(value, "columns") and target in ns:
        return value, ns[target]
    return value, target


def _fraction_or_count(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


def _lookup_data(ns: dict[str, Any], text: str) -> Any:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(names) > 2:
        raise ConfigError(f"--data takes a variable or X,y; got {text!r}")
    missing = [n for n in names if n not in ns]
    if missing:
        raise ConfigError(f"no variable {missing[0]!r} in the notebook for --data")
    values = [ns[n] for n in names]
    return values[0] if len(values) == 1 else tuple(values)
