"""Training checkpoints: where a run's go, how a worker writes one, and which is newest.

Workers write a checkpoint file, then ``latest.json`` naming it, each atomically
(a temporary file renamed over the old one), so a reader sees either the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..security.files import write_atomic

logger = logging.getLogger(__name__)

#: Checkpoint files kept per run (older ones are deleted).
KEEP_CHECKPOINTS = 2

_FILE = re.compile(r"^\.?(xgboost-r\d+\.ubj|torch-e\d+\.pt)(\..*\.tmp)?$")


class Checkpoints:
    """The checkpoints of one training run in ``directory``, one every ``every`` steps (0: none)."""

    def __init__(self, directory: Path, every: int):
        self.dir = Path(directory)
        self.every = int(every)
        self.run = ""

    def reset(self, run: str) -> None:
        """Start run ``run``: earlier runs' checkpoints in the directory are removed."""
        self.run = run
        if not self.every:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.dir.iterdir():
            if p.name == "latest.json" or _FILE.match(p.name):
                p.unlink(missing_ok=True)

    def spec(self) -> dict[str, Any]:
        """What a worker needs to write them (plain data, sent with the task)."""
        return {"dir": str(self.dir), "every": self.every, "run": self.run, "keep": KEEP_CHECKPOINTS}

    def latest(self) -> dict[str, Any] | None:
        """``{"step", "file", "history", "path", ...}`` of this run's newest checkpoint, or None."""
        meta = self.dir / "latest.json"
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if data.get("run") != self.run or not (self.dir / data.get("file", "")).is_file():
            return None
        data["path"] = str(self.dir / data["file"])
        return data


def save_checkpoint(spec: dict[str, Any], kind: str, step: int, write: Callable[[BinaryIO], Any],
                    history: list[dict[str, float]]) -> None:
    """Write one checkpoint (on a worker) and prune old ones. Never raises."""
    try:
        directory = Path(spec["dir"])
        fname = f"xgboost-r{step:06d}.ubj" if kind == "xgboost" else f"torch-e{step:04d}.pt"
        # No fsync: the rename protects against a dying worker process, which is the failure
        # checkpoints are for; an fsync per checkpoint cost more than the checkpoint itself.
        write_atomic(directory / fname, write, durable=False)
        meta = {"run": spec["run"], "kind": kind, "step": step, "file": fname, "history": history,
                "time": time.time()}
        write_atomic(directory / "latest.json", json.dumps(meta).encode(), durable=False)
        prefix = "xgboost-r" if kind == "xgboost" else "torch-e"
        old = sorted(p for p in directory.iterdir() if p.name.startswith(prefix) and ".tmp" not in p.name)
        for p in old[:-spec.get("keep", KEEP_CHECKPOINTS)]:
            p.unlink(missing_ok=True)
    except Exception:  # a full disk must not kill the training; the next checkpoint may work
        logger.exception("checkpoint at step %s not written", step)
