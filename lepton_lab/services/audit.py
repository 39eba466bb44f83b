"""Audit lines written in batches: concurrent decisions share one fsync (group commit)."""

from __future__ import annotations

import threading
from typing import Any

from ..security.audit import AuditLog


class AuditBatcher:
    """One writer thread that commits whatever decisions are waiting as one batch."""

    def __init__(self, audit: AuditLog):
        import queue

        self.audit = audit
        self.queue: "queue.Queue[tuple[dict, Any]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="lepton-audit", daemon=True)
        self.thread.start()

    def submit(self, item: dict[str, Any]):
        from concurrent.futures import Future

        future: Future = Future()
        self.queue.put((item, future))
        return future

    def _run(self) -> None:
        import queue

        while True:
            batch = [self.queue.get()]
            while len(batch) < 512:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                entries = self.audit.record_many([item for item, _ in batch])
            except Exception as e:  # every waiter learns the line was not written
                for _, future in batch:
                    future.set_exception(e)
                continue
            for (_, future), entry in zip(batch, entries):
                future.set_result(entry)
