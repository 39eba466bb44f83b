"""Predictions waiting on a deployment's site, by the user and job id that named them, so they can be stopped.

A REST caller that is interrupted asks for its job to be stopped; one that goes away
has it stopped by the server. Either way the task is cancelled and a worker still
running it restarted (:func:`~lepton_lab.cluster.interrupt.stop_job`), once: a second
request for the same job gets the first one's answer, even after the wait has ended.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import AlreadyExists, NotFound

#: Stopped jobs remembered after their wait ended, so a late second stop gets the first answer.
KEEP_STOPPED = 256
#: Seconds a second stop waits for the first to finish (it may restart a worker).
STOP_WAIT = 120.0


@dataclass
class _Waiting:
    future: Any
    record: dict[str, Any]
    client: Any
    stopped: Future[str] | None = field(default=None)


class Predictions:
    """The predictions waiting now, and those stopped lately."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._stopped: OrderedDict[tuple[str, str], _Waiting] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    @contextmanager
    def waiting(self, user: str, job: str, future: Any, record: dict[str, Any], client: Any) -> Iterator[None]:
        """Hold ``job`` of ``user`` as stoppable while the block waits for ``future``."""
        key = (user, job)
        with self._lock:
            if key in self._waiting or key in self._stopped:
                future.cancel()
                raise AlreadyExists(f"a prediction with job id {job} is already known")
            self._waiting[key] = _Waiting(future, record, client)
        try:
            yield
        finally:
            with self._lock:
                held = self._waiting.pop(key)
                if held.stopped is not None:
                    self._stopped[key] = held
                    while len(self._stopped) > KEEP_STOPPED:
                        self._stopped.popitem(last=False)

    def stop(self, user: str, job: str) -> str:
        """Stop ``job`` of ``user``; what was stopped, in one line. NotFound when it ended unstopped."""
        from ..cluster.interrupt import stop_job
        from ..ml.deployments import predict_label

        key = (user, job)
        with self._lock:
            held = self._waiting.get(key) or self._stopped.get(key)
            if held is None:
                raise NotFound(f"no prediction {job} of {user} is waiting (it has ended)")
            first = held.stopped is None
            if first:
                held.stopped = Future()
        assert held.stopped is not None
        if not first:
            return held.stopped.result(timeout=STOP_WAIT)
        try:
            message = str(stop_job(held.client, predict_label(held.record), futures=[held.future]))
        except BaseException as e:
            held.stopped.set_exception(e)
            raise
        held.stopped.set_result(message)
        return message


__all__ = ["Predictions"]
