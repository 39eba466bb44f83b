"""Audit lines written in batches: concurrent decisions share one fsync (group commit).

A decision appends its line to the pending batch and goes on at once; one writer
thread commits the whole batch with one ``AuditLog.record_many`` (one lock, one
write, one fsync of the log and one of its head) while the next batch fills. Each
request waits for its batch's durability before anything of its answer leaves the
server: :func:`hold_answer` puts the request's connection behind a gate that keeps
the handler's writes until the batch is on disk, so the handler does its work while
the line is being written instead of after.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Generator
from typing import Any

from tornado import httputil
from tornado.concurrent import chain_future

from ..security.audit import AuditEntry, AuditLog

logger = logging.getLogger(__name__)


class _Batch:
    """Decisions committed together, and the one outcome (entries or error) they share."""

    __slots__ = ("items", "entries", "error", "done", "_loops")

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.entries: list[AuditEntry] = []
        self.error: BaseException | None = None
        self.done = False
        # One asyncio future per event loop that waits: one wake-up per batch, not per request.
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Ticket:
    """One decision's place in a batch: ``await ticket`` returns its entry once it is on disk."""

    __slots__ = ("batcher", "batch", "index")

    def __init__(self, batcher: AuditBatcher, batch: _Batch, index: int):
        self.batcher, self.batch, self.index = batcher, batch, index

    def durable(self) -> asyncio.Future:
        """A future of the running loop, done (or failed) when the batch is on disk."""
        return self.batcher._wait(self.batch)

    def result(self) -> AuditEntry:
        """The written entry; raises what the write raised. Only once ``durable()`` is done."""
        if self.batch.error is not None:
            raise self.batch.error
        return self.batch.entries[self.index]

    def __await__(self) -> Generator[Any, None, AuditEntry]:
        yield from self.durable().__await__()
        return self.result()


class AuditBatcher:
    """Group commit: ``submit`` adds to the pending batch; one writer thread commits batch after batch."""

    def __init__(self, audit: AuditLog):
        self.audit = audit
        self._cond = threading.Condition(threading.Lock())
        self._next = _Batch()
        self._closed = False
        #: Batches committed and lines written, for benchmarks and tests.
        self.batches = self.lines = 0
        self.thread = threading.Thread(target=self._run, name="lepton-audit", daemon=True)
        self.thread.start()

    def submit(self, item: dict[str, Any]) -> Ticket:
        """Queue one line (the arguments of ``AuditLog.record``, ``detail`` as a dict); never blocks on disk."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the audit writer is closed")
            batch = self._next
            batch.items.append(item)
            if len(batch.items) == 1:
                self._cond.notify()
            return Ticket(self, batch, len(batch.items) - 1)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.thread.join(timeout)

    def _wait(self, batch: _Batch) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        with self._cond:
            if not batch.done:
                future = batch._loops.get(loop)
                if future is None:
                    future = batch._loops[loop] = loop.create_future()
                return future
        future = loop.create_future()
        _settle(future, batch.error)
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._next.items and not self._closed:
                    self._cond.wait()
                if not self._next.items:
                    return
                batch, self._next = self._next, _Batch()
            try:
                entries = self.audit.record_many(batch.items)
            except BaseException as e:  # every waiter of the batch learns its line was not written
                logger.error("audit batch of %d lines not written: %s", len(batch.items), e)
                error: BaseException | None = e
            else:
                error = None
                self.batches += 1
                self.lines += len(entries)
            with self._cond:
                batch.entries = [] if error is not None else entries
                batch.error, batch.done = error, True
                loops = list(batch._loops.items())
            for loop, future in loops:
                try:
                    loop.call_soon_threadsafe(_settle, future, error)
                except RuntimeError:  # that loop is closed: nobody is left to wake
                    pass


# -- holding an answer until its audit line is durable ----------------------------------------

_REFUSED = b'{"message": "the decision could not be written to the audit log; nothing was done", "reason": null}'


class _HeldConnection:
    """A request's HTTP connection that keeps what the handler writes until the audit lines are on disk.

    Stands in for ``handler.request.connection``; tornado's handler writes through
    ``write_headers``, ``write`` and ``finish``, which are queued and replayed in order
    once every awaited batch is durable. Anything else is the real connection's.
    """

    def __init__(self, request: Any, waiting: asyncio.Future):
        self._request = request
        self._real = request.connection
        self._held: list[tuple[str, tuple, asyncio.Future | None]] = []
        self._waiting = 0
        self._failed = False
        self.wait_for(waiting)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def wait_for(self, durable: asyncio.Future) -> None:
        self._waiting += 1
        durable.add_done_callback(self._one_done)

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> asyncio.Future:
        return self._hold("write_headers", (start_line, headers, chunk))

    def write(self, chunk: bytes) -> asyncio.Future:
        return self._hold("write", (chunk,))

    def finish(self) -> None:
        self._hold("finish", ())

    def _hold(self, name: str, args: tuple) -> Any:
        future = None if name == "finish" else asyncio.get_running_loop().create_future()
        if self._failed:  # the refusal went out in place of this answer
            if future is not None:
                future.set_result(None)
            return future
        self._held.append((name, args, future))
        return future

    def _one_done(self, durable: asyncio.Future) -> None:
        self._waiting -= 1
        failed = durable.cancelled() or durable.exception() is not None
        if failed and not self._failed:
            self._failed = True
            self._refuse()
        if self._waiting or self._failed:
            return
        self._request.connection = self._real
        held, self._held = self._held, []
        for name, args, future in held:
            result = getattr(self._real, name)(*args)
            if future is not None:
                chain_future(result, future)

    def _refuse(self) -> None:
        """The line could not be written: answer 500 in place of whatever the handler wrote."""
        for _, _, future in self._held:
            if future is not None and not future.done():
                future.set_result(None)
        self._held = []
        headers = httputil.HTTPHeaders({"Content-Type": "application/json; charset=UTF-8",
                                        "Content-Length": str(len(_REFUSED)), "Connection": "close"})
        try:
            self._real.write_headers(httputil.ResponseStartLine("HTTP/1.1", 500, "Internal Server Error"),
                                     headers, _REFUSED)
            self._real.finish()
        except Exception as e:  # the client is gone: nothing more to tell it
            logger.debug("could not send the audit refusal: %s", e)


def hold_answer(handler: Any, ticket: Ticket) -> bool:
    """Keep ``handler``'s answer from leaving until ``ticket``'s line is durable.

    False when the request has no connection to hold (the caller then awaits the ticket).
    """
    request = getattr(handler, "request", None)
    connection = getattr(request, "connection", None)
    if request is None or connection is None:
        return False
    if isinstance(connection, _HeldConnection):
        connection.wait_for(ticket.durable())
    else:
        request.connection = _HeldConnection(request, ticket.durable())
    return True


__all__ = ["AuditBatcher", "Ticket", "hold_answer"]
