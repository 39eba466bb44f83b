"""What each team's clusters have cost so far, and the cap a policy may put on it.

Spend is metered while clusters run: every tick adds, per cluster, its workers × the
time since the last tick (worker-hours) and its cost per hour × that time (money, in
the profiles' unit). The totals per team and per cluster, and each team's spend per
calendar month (UTC, ``YYYY-MM``; a tick is counted in the month it ends in), are kept
in one JSON file, written atomically on every change, so they survive a server restart;
a cluster that was running when the server stopped is counted up to its last tick.
``clock`` is a function returning seconds (``time.time``), replaceable to test hours in
milliseconds. A team's spend cap counts its ``spend_period``: this month (the default)
or everything it ever spent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import QuotaExceeded
from .files import write_atomic

#: What a cap counts when the policy does not say.
DEFAULT_PERIOD = "month"


def month_of(seconds: float) -> str:
    """The calendar month (UTC) of a time in seconds since the epoch, as ``YYYY-MM``."""
    return time.strftime("%Y-%m", time.gmtime(seconds))


@dataclass
class Spend:
    """Money and worker-hours spent so far."""

    spend: float = 0.0
    worker_hours: float = 0.0


class SpendMeter:
    """Spend per team and per cluster, accumulated on ``tick`` and persisted at ``path`` (None: in memory)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time):
        self.path = Path(path) if path is not None else None
        self.clock = clock
        self._lock = threading.Lock()
        self.teams: dict[str, Spend] = {}
        self.clusters: dict[str, Spend] = {}
        #: team -> month (``YYYY-MM``) -> what the team spent in it.
        self.months: dict[str, dict[str, Spend]] = {}
        self._last: dict[str, float] = {}  # running cluster id -> time of its last tick
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        self.teams = {t: Spend(**v) for t, v in (data.get("teams") or {}).items()}
        self.clusters = {c: Spend(**v) for c, v in (data.get("clusters") or {}).items()}
        self.months = {t: {m: Spend(**v) for m, v in per.items()} for t, per in (data.get("months") or {}).items()}

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"teams": {t: asdict(v) for t, v in self.teams.items()},
                "clusters": {c: asdict(v) for c, v in self.clusters.items()},
                "months": {t: {m: asdict(v) for m, v in per.items()} for t, per in self.months.items()}}
        write_atomic(self.path, json.dumps(data, indent=1).encode(), durable=False)

    def start(self, cluster_id: str) -> None:
        """Begin metering a cluster from now."""
        with self._lock:
            self._last[cluster_id] = self.clock()
            self.clusters.setdefault(cluster_id, Spend())
            self._save()

    def tick(self, cluster_id: str, team: str, workers: int, cost_per_hour: float) -> Spend:
        """Add what ``cluster_id`` (of ``team``, ``workers`` workers costing ``cost_per_hour`` together)
        has cost since its last tick; returns its total."""
        with self._lock:
            now = self.clock()
            hours = max(now - self._last.get(cluster_id, now), 0.0) / 3600
            self._last[cluster_id] = now
            month = self.months.setdefault(team, {}).setdefault(month_of(now), Spend())
            for total in (self.teams.setdefault(team, Spend()), self.clusters.setdefault(cluster_id, Spend()), month):
                total.spend = round(total.spend + cost_per_hour * hours, 6)
                total.worker_hours = round(total.worker_hours + workers * hours, 6)
            self._save()
            return Spend(**asdict(self.clusters[cluster_id]))

    def stop(self, cluster_id: str) -> None:
        """Stop metering a cluster (tick it first); its total stays in the team's."""
        with self._lock:
            self._last.pop(cluster_id, None)

    def forget(self, cluster_id: str) -> None:
        """Drop a removed cluster's own total; its team's total keeps what it cost."""
        with self._lock:
            self._last.pop(cluster_id, None)
            if self.clusters.pop(cluster_id, None) is not None:
                self._save()

    def team(self, team: str, period: str = "total") -> Spend:
        """What ``team`` spent: in all (``total``) or in the calendar month now (``month``, UTC)."""
        with self._lock:
            if period == "month":
                return replace(self.months.get(team, {}).get(month_of(self.clock()), Spend()))
            return replace(self.teams.get(team, Spend()))

    def month(self) -> str:
        """The calendar month (UTC) now, ``YYYY-MM``."""
        return month_of(self.clock())

    def cluster(self, cluster_id: str) -> Spend:
        with self._lock:
            return replace(self.clusters.get(cluster_id, Spend()))


def check_spend_cap(team: str, spent: Spend, cap: float | None, source: str = "the policy",
                    period: str = "total", month: str = "") -> None:
    """QuotaExceeded, in one line naming the cap, its period and the spend, when ``team`` has reached ``cap``."""
    if cap is None or spent.spend < cap:
        return
    if period == "month":
        raise QuotaExceeded(f"team {team} has spent {spent.spend:.2f} of its monthly spend cap {cap:.2f} in "
                            f"{month} (UTC; {spent.worker_hours:.2f} worker-hours); no new cluster until next "
                            f"month or until an admin raises quotas.teams.{team}.spend_cap in {source}")
    raise QuotaExceeded(f"team {team} has spent {spent.spend:.2f} of its spend cap {cap:.2f} "
                        f"({spent.worker_hours:.2f} worker-hours); no new cluster until an admin raises "
                        f"quotas.teams.{team}.spend_cap in {source}")


def spend_view(spent: Spend, cap: float | None, period: str = "total", month: str = "") -> dict[str, Any]:
    """The JSON who-am-I and the cluster list show for a team's spend: over ``period`` (``month``: ``month``)."""
    return {"spend": round(spent.spend, 4), "worker_hours": round(spent.worker_hours, 4), "spend_cap": cap,
            "spend_period": period, "month": month if period == "month" else None}
