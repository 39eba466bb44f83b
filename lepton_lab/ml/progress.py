"""Live training progress: workers post events, the notebook shows a bar and the metric.

A training task calls :func:`post` (on a Dask worker it becomes
``get_worker().log_event``, so the message travels over the worker's existing
connection to the scheduler); the kernel's :class:`ProgressListener` subscribes
to the topic, moves a ``tqdm.auto`` bar and shows the latest holdout metric
next to it. A message goes out per epoch, and per XGBoost round at most every
:data:`MIN_INTERVAL` seconds with the rounds in between in its ``rows``.
Messages carry a run id so that an old run's events (the scheduler keeps them)
never move a new run's bar.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: Seconds between two progress messages of a run (the rounds in between ride along in
#: ``rows``): a message per XGBoost round, 20 a second, measurably slowed the training.
MIN_INTERVAL = 0.25


def topic_for(name: str) -> str:
    """The event topic of training runs called ``name``."""
    return f"lepton-train:{name}"


def worker_name() -> str:
    """The name of the Dask worker running this code, or ``""`` outside a worker."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except ValueError:
        return ""


def post(topic: str, msg: dict[str, Any]) -> None:
    """Send one progress message from a task; outside a Dask worker it does nothing.

    ``msg`` must be msgpack-serialisable (numbers, strings, lists, dicts).
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not running on a worker (a plain function call)
        return
    try:
        worker.log_event(topic, msg)
    except Exception:  # progress is best effort: never fail a training for it
        logger.debug("could not post progress on %s", topic, exc_info=True)


class ProgressListener:
    """Follows one run's progress events: a tqdm bar, a count, and a user callback.

    ``total`` is the number of rounds or epochs; ``unit`` is ``"round"`` or
    ``"epoch"``. The callback gets each message (a dict with ``round``/``epoch``,
    ``total``, ``metrics`` (the latest), ``rows`` (every round or epoch since the
    previous message), ``worker_name``, and ``worker``: the address the
    scheduler adds) on the client's event-loop thread, so it must be quick.
    """

    def __init__(self, client: Any, topic: str, run: str, *, total: int, unit: str, desc: str,
                 show: bool = True, on_progress: Callable[[dict[str, Any]], Any] | None = None):
        self.client = client
        self.topic = topic
        self.run = run
        self.total = total
        self.unit = unit
        self.desc = desc
        self.show = show
        self.on_progress = on_progress
        self.events = 0
        self.last: dict[str, Any] | None = None
        self.last_time = time.monotonic()
        #: (attempt, rank) -> (when, phase, worker) of each data-parallel rank's latest beat
        self.beats: dict[tuple[int, int], tuple[float, str, str]] = {}
        self.bar: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> "ProgressListener":
        if self.show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=True)
        self.client.subscribe_topic(self.topic, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _handle(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        if not isinstance(msg, dict) or msg.get("run") != self.run:
            return
        if msg.get("beat"):  # a rank saying what it is doing: no progress of its own
            with self._lock:
                self.beats[(int(msg.get("attempt", 0)), int(msg.get("rank", 0)))] = (
                    time.monotonic(), str(msg.get("phase", "")), str(msg.get("worker_name", "")))
            return
        with self._lock:
            self.events += 1
            self.last = msg
            self.last_time = time.monotonic()
            if self.bar is not None:
                done = int(msg.get(self.unit, 0))
                if done != self.bar.n:
                    self.bar.n = done
                metrics = msg.get("metrics") or {}
                if metrics:
                    self.bar.set_postfix({k: _short(v) for k, v in metrics.items()}, refresh=False)
                self.bar.refresh()
        if self.on_progress is not None:
            try:
                self.on_progress(msg)
            except Exception:  # a user's callback must not break the event stream
                logger.exception("on_progress callback failed")

    def silent(self, attempt: int, ranks: dict[int, str], since: float,
               longer_than: float) -> list[tuple[int, str, float, str]]:
        """Ranks of ``attempt`` with no beat for ``longer_than`` seconds (counting from ``since``
        at the latest): ``(rank, worker, seconds silent, last phase)`` each.

        Once one rank is that silent, every rank silent for at least half as long is named
        with it: ranks blocked in one collective stop within moments of each other, and on
        a busy machine the last beats of the others may have arrived a little later.
        """
        now = time.monotonic()
        quiet_ranks = []
        with self._lock:
            for rank, worker in sorted(ranks.items()):
                when, phase, name = self.beats.get((attempt, rank), (since, "not started", worker))
                quiet_ranks.append((rank, name or worker, now - max(when, since), phase))
        if not any(quiet > longer_than for _, _, quiet, _ in quiet_ranks):
            return []
        return [r for r in quiet_ranks if r[2] > longer_than / 2]

    def note(self, text: str) -> None:
        """A short status line under the bar (a restart, say)."""
        if self.bar is not None:
            self.bar.set_description(f"{self.desc} ({text})", refresh=True)
        else:
            logger.info("%s: %s", self.desc, text)

    def rewind(self, done: int) -> None:
        """Move the bar back to ``done`` (training resumed from a checkpoint)."""
        with self._lock:
            if self.bar is not None:
                self.bar.n = done
                self.bar.refresh()

    def wait_for(self, unit: str, step: int, timeout: float) -> bool:
        """Wait (briefly) until the event of ``step`` has arrived: events travel apart from results."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self.last is not None and int(self.last.get(unit, 0)) >= step:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        try:
            self.client.unsubscribe_topic(self.topic)
        except Exception:
            pass
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def _short(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value
