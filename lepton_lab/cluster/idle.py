"""How long a cluster has been idle: no task and no client activity, read from its scheduler.

The scheduler keeps ``idle_since`` itself (``Scheduler.check_idle`` runs every 250 ms and
clears it on any task transition, queued or running task); :func:`activity` reads it, with
the scheduler's count of client connections, in one call on the scheduler.
:class:`IdleClock` turns successive readings into seconds idle: a new client connection
counts as activity from the moment it is seen, as does anything running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


def activity(dask_scheduler: Any) -> dict[str, Any]:
    """What the scheduler knows of its own activity (runs on the scheduler)."""
    s = dask_scheduler
    busy = bool(s.queued or s.unrunnable or any(ws.processing for ws in s.workers.values()))
    return {"now": time.time(), "idle_since": None if busy else s.idle_since, "busy": busy,
            "clients": int(getattr(s, "_client_connections_added_total", 0)),
            "transitions": int(getattr(s, "transition_counter", 0))}


@dataclass
class _Seen:
    clients: int
    transitions: int
    active_at: float


class IdleClock:
    """Seconds each cluster has been idle, from readings of :func:`activity` taken over time."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def idle_for(self, cluster_id: str, reading: dict[str, Any], now: float | None = None) -> float:
        """Seconds since the last task or client activity on ``cluster_id`` (0 while busy)."""
        now = time.time() if now is None else now
        seen = self._seen.get(cluster_id)
        if seen is None:
            seen = self._seen[cluster_id] = _Seen(reading["clients"], reading["transitions"], now)
        if reading["busy"] or reading["clients"] != seen.clients or reading["transitions"] != seen.transitions:
            seen.clients, seen.transitions, seen.active_at = reading["clients"], reading["transitions"], now
        if reading["busy"] or reading["idle_since"] is None:
            return 0.0
        # Measured on the scheduler's clock, so a skew between the machines does not count.
        scheduler_idle = max(reading["now"] - reading["idle_since"], 0.0)
        return min(scheduler_idle, max(now - seen.active_at, 0.0))

    def forget(self, cluster_id: str) -> None:
        self._seen.pop(cluster_id, None)
