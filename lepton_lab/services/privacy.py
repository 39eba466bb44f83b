"""The privacy ledger: differential-privacy spending per team and dataset, counted before it is spent.

Every differentially private run on a team's dataset is charged here *before* it
starts: its Gaussian mechanism (noise multiplier, sampling rate, number of
steps). Charges compose by adding their Rényi-DP curves (adaptive composition
holds for RDP), and the total ε at the budget's δ is what the policy's
``privacy:`` budget for the team (or for ``team/dataset``) is checked against:
a charge that would take the total past the budget is refused, nothing is
spent, and the refusal says how much was spent already and on what. Every
charge and every refusal is an audit line. The ledger is a JSON file per
dataset under ``<home>/privacy/<team>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError, NotFound, PermissionDenied
from ..ml.privacy import ORDERS, epsilon, rdp_sampled_gaussian
from ..security.audit import AuditLog
from ..security.files import write_atomic
from ..security.policy import Policy

__all__ = ["PrivacyLedger", "SPEND"]

#: Spending privacy runs a job on the team's data.
SPEND = "clusters:use"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: δ that totals are reported at when the policy sets no budget.
DEFAULT_DELTA = 1e-5


class PrivacyLedger:
    """Spending of every team's datasets, under ``policy`` (``who`` has ``.name`` and ``.groups``)."""

    def __init__(self, policy: Policy, *, home: Path, audit: AuditLog):
        self.policy = policy
        self.root = Path(home) / "privacy"
        self.audit = audit

    def path(self, team: str, dataset: str) -> Path:
        if team not in self.policy.teams:
            raise NotFound(f"no team {team!r} (teams: {', '.join(self.policy.teams)})")
        if not _NAME.match(str(dataset)):
            raise ConfigError(f"dataset must be letters, digits, '_', '-' or '.', starting with a letter; "
                              f"got {dataset!r}")
        return self.root / team / f"{dataset}.json"

    def budget(self, team: str, dataset: str) -> tuple[float, float] | None:
        """(ε, δ) the policy allows on ``team``'s ``dataset``, or None when it sets none."""
        return self.policy.privacy_budget(team, dataset)

    def spent(self, team: str, dataset: str, delta: float | None = None) -> tuple[float, list[dict[str, Any]]]:
        """(total ε at ``delta`` (default: the budget's), the charges so far)."""
        entries = self._read(self.path(team, dataset))
        return self._total(entries, self._delta(team, dataset, delta)), entries

    def charge(self, who: Any, team: str, dataset: str, *, noise_multiplier: float, sample_rate: float,
               steps: int, what: str, delta: float | None = None) -> dict[str, Any]:
        """Charge one run; its ε, the total after it and the budget. PermissionDenied (audited) past the budget."""
        path = self.path(team, dataset)
        resource = f"privacy:{team}/{dataset}"
        if not self.policy.allows(who.name, who.groups, SPEND, team):
            reason = self.policy.explain(who.name, who.groups, SPEND, team)
            self.audit.record(who.name, "privacy:spend", resource, "deny", reason=reason)
            raise PermissionDenied(reason)
        budget = self.budget(team, dataset)
        d = self._delta(team, dataset, delta)
        entry = {"what": what, "user": who.name, "noise_multiplier": float(noise_multiplier),
                 "sample_rate": float(sample_rate), "steps": int(steps),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(path):
            entries = self._read(path)
            before = self._total(entries, d)
            after = self._total(entries + [entry], d)
            alone = self._total([entry], d)
            if budget is not None and after > budget[0]:
                on = _summary(entries)
                reason = (f"privacy budget of {team}/{dataset} is ε={budget[0]:g} at δ={budget[1]:g}; "
                          f"{before:.3f} spent on {on}; {what} would cost ε={alone:.3f} and bring it to "
                          f"{after:.3f}: refused")
                self.audit.record(who.name, "privacy:spend", resource, "deny", reason=reason,
                                  epsilon=alone, total=before)
                raise PermissionDenied(reason)
            entry["epsilon"] = alone
            entry["total"] = after
            write_atomic(path, json.dumps(entries + [entry], indent=1).encode(), mode=0o600)
        self.audit.record(who.name, "privacy:spend", resource, "allow", what=what, epsilon=alone, total=after,
                          delta=d)
        return {"epsilon": alone, "total": after, "delta": d, "budget": None if budget is None else budget[0]}

    # -- helpers ---------------------------------------------------------------------------

    def _delta(self, team: str, dataset: str, delta: float | None) -> float:
        budget = self.budget(team, dataset)
        return budget[1] if budget is not None else (delta or DEFAULT_DELTA)

    @staticmethod
    def _total(entries: list[dict[str, Any]], delta: float) -> float:
        if not entries:
            return 0.0
        rdp = np.zeros(len(ORDERS))
        for e in entries:
            rdp += e["steps"] * np.array([rdp_sampled_gaussian(e["sample_rate"], e["noise_multiplier"], a)
                                          for a in ORDERS])
        return epsilon(rdp, ORDERS, delta)[0]

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        try:
            return list(json.loads(path.read_text()))
        except FileNotFoundError:
            return []


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The ledger of one dataset, held by one process at a time (another kernel may be charging it)."""
    fd = os.open(str(path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _summary(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "nothing yet"
    shown = "; ".join(f"{e['what']} (ε={e.get('epsilon', 0):.3f})" for e in entries[-3:])
    more = f"{len(entries) - 3} earlier run(s); " if len(entries) > 3 else ""
    return f"{len(entries)} run(s): {more}{shown}"
