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
import math
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

__all__ = ["PrivacyLedger", "SPEND", "READ", "check_dataset"]

#: Spending privacy runs a job on the team's data.
SPEND = "clusters:use"
#: Seeing a team's budgets and what was spent of them.
READ = "clusters:read"
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
        return self.root / team / f"{check_dataset(dataset)}.json"

    def budget(self, team: str, dataset: str) -> tuple[float, float] | None:
        """(ε, δ) the policy allows on ``team``'s ``dataset``, or None when it sets none."""
        return self.policy.privacy_budget(team, dataset)

    def spent(self, team: str, dataset: str, delta: float | None = None) -> tuple[float, list[dict[str, Any]]]:
        """(total ε at ``delta`` (default: the budget's), the charges so far)."""
        entries = self._read(self.path(team, dataset))
        return self._total(entries, self._delta(team, dataset, delta)), entries

    def overview(self, who: Any, team: str, dataset: str | None = None) -> dict[str, Any]:
        """``team``'s budget and, per dataset (those charged and those the policy budgets; or just ``dataset``),
        its budget, the ε spent at the budget's δ and the number of runs charged."""
        if team not in self.policy.teams:
            raise NotFound(f"no team {team!r} (teams: {', '.join(self.policy.teams)})")
        names = None if dataset is None else [check_dataset(dataset)]
        if not self.policy.allows(who.name, who.groups, READ, team):
            reason = self.policy.explain(who.name, who.groups, READ, team)
            self.audit.record(who.name, READ, f"privacy:{team}", "deny", reason=reason)
            raise PermissionDenied(reason)
        if names is None:
            folder = self.root / team
            charged = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
            budgeted = {key.partition("/")[2] for key in self.policy.privacy if key.startswith(f"{team}/")}
            names = sorted(charged | budgeted)
        rows = []
        for name in names:
            budget = self.budget(team, name)
            total, entries = self.spent(team, name)
            rows.append({"dataset": name, "budget": None if budget is None else budget[0],
                         "delta": self._delta(team, name, None), "spent": total, "runs": len(entries),
                         "last": entries[-1]["when"] if entries else None})
        own = self.policy.privacy_budget(team)
        return {"team": team, "budget": None if own is None else {"epsilon": own[0], "delta": own[1]},
                "datasets": rows}

    def charge(self, who: Any, team: str, dataset: str, *, noise_multiplier: float, sample_rate: float,
               steps: int, what: str, delta: float | None = None) -> dict[str, Any]:
        """Charge one run; its ε, the total after it and the budget. PermissionDenied (audited) past the budget."""
        path = self.path(team, dataset)
        _check_mechanism(noise_multiplier, sample_rate, steps, what, delta)
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


def check_dataset(name: Any) -> str:
    """``name`` when it may name a dataset's ledger; ConfigError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"dataset must be letters, digits, '_', '-' or '.', starting with a letter; "
                          f"got {name!r}")
    return name


def _check_mechanism(noise_multiplier: Any, sample_rate: Any, steps: Any, what: Any, delta: Any) -> None:
    """One line for a mechanism that cannot be charged (the ledger only composes well-formed ones)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not number(noise_multiplier) or noise_multiplier <= 0:
        raise ConfigError(f"privacy charge: noise_multiplier must be a positive number, got {noise_multiplier!r}")
    if not number(sample_rate) or not 0 < sample_rate <= 1:
        raise ConfigError(f"privacy charge: sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
        raise ConfigError(f"privacy charge: steps must be a whole number from 1 to 1000000, got {steps!r}")
    if not isinstance(what, str) or not what.strip() or len(what) > 200 or "\n" in what:
        raise ConfigError("privacy charge: 'what' must be one line of at most 200 characters naming the run")
    if delta is not None and (not number(delta) or not 0 < delta < 1):
        raise ConfigError(f"privacy charge: delta must be between 0 and 1, got {delta!r}")


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
