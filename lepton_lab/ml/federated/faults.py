"""Chaos for tests: faults armed on a site's workers, failing or hanging one phase of chosen rounds.

The armed faults live in this module on each worker; the site's tasks check them as they start.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable

from lepton_lab.cluster.workers import site_workers
from lepton_lab.errors import ConfigError
from lepton_lab.ml.federated.options import PHASES

_FAULTS: dict[str, list[dict[str, Any]]] = {}  # site -> armed faults (testing aid)


def _armed(site: str, phase: str, round_no: int) -> dict[str, Any] | None:
    return next((f for f in _FAULTS.get(site, ())
                 if f["phase"] == phase and (f["rounds"] is None or round_no in f["rounds"])), None)


def _injected(site: str, phase: str, round_no: int) -> RuntimeError:
    return RuntimeError(f"injected fault: site {site} fails in {phase} of round {round_no}")


def _fault(site: str, phase: str, round_no: int) -> None:
    """In a site's task or threaded call: fail, after a sleep if the fault hangs."""
    f = _armed(site, phase, round_no)
    if f is not None:
        if f["mode"] == "hang":
            time.sleep(f["seconds"])
        raise _injected(site, phase, round_no)


async def _afault(site: str, phase: str, round_no: int) -> None:
    """In a call on the worker's event loop: the same, its hang an answer that is late, not a stalled worker."""
    f = _armed(site, phase, round_no)
    if f is not None:
        if f["mode"] == "hang":
            await asyncio.sleep(f["seconds"])
        raise _injected(site, phase, round_no)


def _arm_fault(site: str, phase: str, rounds: list[int] | None, mode: str, seconds: float) -> None:
    _FAULTS.setdefault(site, []).append({"phase": phase, "rounds": None if rounds is None else set(rounds),
                                         "mode": mode, "seconds": seconds})


def _disarm_faults() -> None:
    _FAULTS.clear()


def inject_fault(client, site: str, phase: str, rounds: Iterable[int] | None = None, *,
                 mode: str = "raise", seconds: float = 30.0) -> list[str]:
    """Testing aid (chaos): make ``site``'s workers fail in ``phase`` of ``rounds``.

    ``mode="raise"`` fails the task at once; ``"hang"`` sleeps ``seconds`` first, as a
    site whose link is slow or gone. Phases: load, keys, share, train, unmask (for
    keys and share, ``rounds`` counts key epochs). Returns the worker addresses armed.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r} (phases: {', '.join(PHASES)})")
    if mode not in ("raise", "hang"):
        raise ConfigError(f"unknown fault mode {mode!r} (raise or hang)")
    addrs = list(site_workers(client, site))
    if not addrs:
        raise ConfigError(f"no worker of site {site!r} to arm")
    client.run(_arm_fault, site, phase, None if rounds is None else sorted(rounds), mode, seconds,
               workers=addrs)
    return addrs


def clear_faults(client) -> None:
    """Disarm every fault :func:`inject_fault` armed on the cluster's workers."""
    client.run(_disarm_faults)
