"""Secure-aggregation key epochs: when the sites need new keys, and the exchange that makes them.

One set of keys serves up to :data:`~.options.EPOCH_ROUNDS` rounds; a site lost after the
shares went out burns the epoch, and every site makes new keys next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lepton_lab.ml.federated.options import EPOCH_ROUNDS
from lepton_lab.ml.federated.site import _site_keys, _site_share
from lepton_lab.ml.secagg import Roster, SecAggCoordinator, threshold_for

#: ``rpc(fn, {site: args}, timeout) -> (results, {site: reason})``: a call on each site's worker.
Rpc = Callable[[Callable, dict[str, tuple], float], tuple[dict[str, Any], dict[str, str]]]


@dataclass
class _Epoch:
    number: int
    coordinator: SecAggCoordinator
    rounds: tuple[int, ...]


def need_rekey(epoch: _Epoch | None, round_no: int, sampled: list[str]) -> bool:
    """Whether ``round_no`` needs a new epoch: none yet, burned, expired, or a sampled site holds no keys."""
    e = epoch
    return (e is None or bool(e.coordinator.burned) or round_no not in e.rounds
            or any(s not in e.coordinator.keyed for s in sampled))


def open_epoch(rpc: Rpc, *, run_id: str, number: int, available: list[str], sites: list[str], round_no: int,
               rounds: int, min_sites: int, timeout: float, dropped: dict[str, str]) -> _Epoch | None:
    """Epoch ``number``: every available site makes keys and shares its secrets with the others.

    Sites that fail are added to ``dropped``; None when too few sites end up keyed.
    """
    context = f"{run_id}|{number}".encode()
    keys, failed = rpc(_site_keys, {s: (run_id, s, number, context) for s in available}, timeout)
    dropped.update({s: f"keys: {why}" for s, why in failed.items()})
    if len(keys) < max(2, min_sites):
        return None
    order = sorted(keys, key=sites.index)
    last = min(rounds, round_no + EPOCH_ROUNDS - 1)
    roster = Roster(context, {s: (i + 1, *keys[s]) for i, s in enumerate(order)}, threshold_for(len(order)),
                    tuple(range(round_no, last + 1)))
    shares, failed = rpc(_site_share, {s: (run_id, s, number, roster) for s in order}, timeout)
    dropped.update({s: f"share: {why}" for s, why in failed.items()})
    coordinator = SecAggCoordinator(roster)
    for s, (outbox, commitments) in shares.items():
        coordinator.route(s, outbox, commitments)
    if len(coordinator.keyed) >= max(roster.threshold, min_sites):
        return _Epoch(number, coordinator, roster.rounds)
    return None
