"""``%lepton plan KIND [options]``: where the placement planner would put a job, and why.

    %lepton plan train --workers 2 --gpus 1 --data-site edge-hospital-a --data-gb 2
    %lepton plan federate
    %lepton plan tune --workers 8 --hours 0.5

Nothing is started: the plan is read from the cluster's live allocation and its sites' costs.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.display import display

from ... import api
from .arguments import add_verb, count

KINDS = ("train", "federate", "serve", "tune")


def _amount(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0: {text!r}")
    return x


def add_parsers(verbs: Any) -> None:
    """Add ``%lepton plan`` to ``%lepton``'s sub-parsers."""
    p = add_verb(verbs, "plan", "where the planner would put a job: sites, workers, GPUs, cost per hour, why",
                 _plan)
    p.add_argument("kind", choices=KINDS, help="train and serve: one site; tune: a worker per trial; "
                                                "federate: a worker on each edge site")
    p.add_argument("--workers", type=count, default=None, help="workers the job takes (default 1)")
    p.add_argument("--gpus", type=count, default=0, help="how many of them are GPU workers")
    p.add_argument("--memory", default=None, help="memory per worker, e.g. 2GiB")
    p.add_argument("--hours", type=_amount, default=1.0, help="expected duration (default 1)")
    p.add_argument("--data-site", dest="data_site", default=None, help="the site that holds the job's data")
    p.add_argument("--data-gb", dest="data_gb", type=_amount, default=0.0, help="how much data is there")
    p.add_argument("--data-stays", dest="data_moves", action="store_false",
                   help="the data may not leave --data-site")
    p.add_argument("--sites", default=None, help="allowed sites (federate: its sites), comma-separated")
    p.add_argument("--cluster", default=None, help="cluster name (default: the current one)")


def _plan(magics: Any, a: argparse.Namespace) -> None:
    choice = api.plan(a.kind, workers=a.workers, gpus=a.gpus, memory=a.memory, hours=a.hours,
                      data_site=a.data_site, data_gb=a.data_gb, data_moves=a.data_moves, sites=a.sites,
                      name=a.cluster)
    display({"text/plain": repr(choice), "text/html": choice._repr_html_()}, raw=True)
