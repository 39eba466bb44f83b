"""Hyper-parameter studies of a team: stored under LEPTON_HOME, opened under the policy, audited.

A study is an Optuna journal (``JournalStorage`` over a ``JournalFileBackend``)
at ``<home>/studies/<team>/<study>.log``: an append-only file that survives the
kernel, so running a study of the same name again continues it. Opening one
needs ``clusters:use`` in the team (its trials run as jobs on the team's
clusters); listing needs ``clusters:read``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotFound, PermissionDenied
from ..security.audit import AuditLog
from ..security.policy import Policy

__all__ = ["StudyStore", "RUN", "READ"]

#: The permission that opens (creates, continues) a study: its trials are cluster jobs.
RUN = "clusters:use"
READ = "clusters:read"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class StudyStore:
    """The studies of every team, for callers the policy knows (``who`` has ``.name`` and ``.groups``)."""

    def __init__(self, policy: Policy, *, home: Path, audit: AuditLog):
        self.policy = policy
        self.root = Path(home) / "studies"
        self.audit = audit

    def path(self, team: str, name: str) -> Path:
        """Where the journal of ``team``'s study ``name`` lives."""
        if not _NAME.match(str(name)):
            raise ConfigError(f"study name must be letters, digits, '_', '-' or '.', starting with a letter, "
                              f"at most 64 characters; got {name!r}")
        if team not in self.policy.teams:
            raise NotFound(f"no team {team!r} (teams: {', '.join(self.policy.teams)})")
        return self.root / team / f"{name}.log"

    def _require(self, who: Any, permission: str, team: str, resource: str) -> None:
        if self.policy.allows(who.name, who.groups, permission, team):
            return
        reason = self.policy.explain(who.name, who.groups, permission, team)
        self.audit.record(who.name, permission, resource, "deny", reason=reason)
        raise PermissionDenied(reason)

    def open(self, who: Any, team: str, name: str, *, direction: str, sampler: Any = None,
             pruner: Any = None) -> Any:
        """The Optuna study ``name`` of ``team``, created on first use, continued after.

        A stored study keeps its direction: asking the other one is a ConfigError.
        """
        from optuna.storages.journal import JournalStorage

        path = self.path(team, name)
        resource = f"studies:{team}/{name}"
        self._require(who, RUN, team, resource)
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not existed:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        study = open_study(JournalStorage(_backend(path)), team, name, direction=direction, sampler=sampler,
                           pruner=pruner)
        self.audit.record(who.name, RUN, resource, "allow", action_detail="continue" if existed else "create",
                          trials=len(study.trials))
        return study

    def read_journal(self, who: Any, team: str, name: str, start: int = 0) -> list[dict[str, Any]]:
        """The journal entries of study ``name`` from number ``start`` on (a remote kernel's Optuna reads them)."""
        path = self.path(team, name)
        resource = f"studies:{team}/{name}"
        self._require(who, RUN, team, resource)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ConfigError(f"study journal: 'from' must be a whole number >= 0, got {start!r}")
        if start == 0:
            self.audit.record(who.name, RUN, resource, "allow", action_detail="continue" if path.exists()
                              else "create")
        if not path.exists():
            return []
        return list(_backend(path).read_logs(start))

    def append_journal(self, who: Any, team: str, name: str, logs: list[dict[str, Any]]) -> int:
        """Append ``logs`` (Optuna journal operations a remote kernel wrote) to study ``name``."""
        path = self.path(team, name)
        self._require(who, RUN, team, f"studies:{team}/{name}")
        if not isinstance(logs, list) or not all(isinstance(log, dict) and isinstance(log.get("op_code"), int)
                                                 for log in logs):
            raise ConfigError("study journal: 'logs' must be a list of Optuna journal operations (objects "
                              "with an integer op_code)")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        if logs:
            _backend(path).append_logs(logs)
        return len(logs)

    def names(self, who: Any, team: str) -> list[str]:
        """The studies of ``team`` (names), for a caller who may read the team's clusters."""
        folder = self.path(team, "x").parent
        self._require(who, READ, team, f"studies:{team}")
        return sorted(p.stem for p in folder.glob("*.log")) if folder.is_dir() else []


def open_study(storage: Any, team: str, name: str, *, direction: str, sampler: Any = None,
               pruner: Any = None) -> Any:
    """The Optuna study ``name`` in ``storage``, created on first use; a stored one keeps its direction."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,  # type: ignore[arg-type]
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.direction.name.lower()
    if stored != direction:
        raise ConfigError(f"study {team}/{name} is stored to {stored}; "
                          f"use direction={stored!r} or another study name")
    return study


def _backend(path: Path) -> Any:
    """The journal file of a study, synced to disk when a trial ends (and for study-level changes).

    A trial is a dozen journal writes (creation, parameters, a metric every few
    rounds, attributes, its end); an fsync for each (about 2 ms here, more under
    load) held the tuning loop up more than small trials took. Syncing at a trial's
    end also makes everything written before it durable; what a crash can lose is
    the running trials' progress, and those are run again on resume anyway.
    """
    from optuna.storages.journal import JournalFileBackend

    try:
        from optuna.storages.journal._file import get_lock_file
        from optuna.storages.journal._storage import JournalOperation
    except ImportError:  # another layout of Optuna's internals: every write synced
        return JournalFileBackend(str(path))
    light = {int(op) for op in (JournalOperation.CREATE_TRIAL, JournalOperation.SET_TRIAL_PARAM,
                                JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE, JournalOperation.SET_TRIAL_USER_ATTR,
                                JournalOperation.SET_TRIAL_SYSTEM_ATTR)}

    class Backend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            if any(log.get("op_code") not in light for log in logs) or not hasattr(self, "_lock"):
                return super().append_logs(logs)
            with get_lock_file(self._lock):
                text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
                with open(self._file_path, "ab") as f:
                    f.write(text.encode("utf-8"))

    return Backend(str(path))
