"""Audit lines written in batches: concurrent decisions share one fsync (group commit).

A decision appends its line to the pending batch and goes on at once; a writer
process (:mod:`lepton_lab.security.audit_writer`) commits the whole batch with one
``AuditLog.record_many`` (one lock, one write, one fsync) while the next batch fills.
Each request waits for its batch's durability before anything of its answer leaves
the server: :func:`hold_answer` puts the request's connection behind a gate that keeps
the handler's writes until the batch is on disk, so the handler does its work while
the line is being written instead of after.

The commit runs in a process of its own, not a thread of the server's: a thread needs
the server's interpreter lock after each system call of a commit, and a busy event
loop, taking the lock back around each of its own system calls, leaves it hardly a
turn. A held answer leaves as soon as the event loop's thread next looks, not a loop
turn later: the loop's selector watches the writer's replies, and the loop also looks
whenever another decision is held and whenever a held handler finishes. In a burst,
one loop turn handles many requests; an answer released by a callback would wait for
the whole turn, so every answer of the burst would leave at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from tornado import httputil
from tornado.concurrent import chain_future

from ..security.audit import AuditEntry, AuditLog
from ..security.audit_writer import WriterProcess, rebuild

logger = logging.getLogger(__name__)


class _Batch:
    """Decisions committed together, and the one outcome (entries or error) they share."""

    __slots__ = ("items", "entries", "error", "done", "_loops", "_held")

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.entries: list[AuditEntry] = []
        self.error: BaseException | None = None
        self.done = False
        # One asyncio future per event loop that waits: one wake-up per batch, not per request.
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}
        # Held answers, per event loop: called on that loop's thread with the batch's error.
        self._held: dict[asyncio.AbstractEventLoop, list[Callable[[BaseException | None], None]]] = {}


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

    def when_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback(error)`` on the running loop's thread once the batch is on disk
        (``error`` None) or failed: at once if it already is, else at the loop's next look."""
        self.batcher._hold(self.batch, callback)

    def result(self) -> AuditEntry:
        """The written entry; raises what the write raised. Only once ``durable()`` is done."""
        if self.batch.error is not None:
            raise self.batch.error
        return self.batch.entries[self.index]

    def __await__(self) -> Generator[Any, None, AuditEntry]:
        yield from self.durable().__await__()
        return self.result()


#: A finished batch, the futures waiting on it, and the loops holding answers for it.
_Woken = tuple[_Batch, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]], list[asyncio.AbstractEventLoop]]


class AuditBatcher:
    """Group commit: ``submit`` adds to the pending batch; a writer process commits batch after batch.

    One batch is in the writer at a time and the next fills meanwhile. The writer's
    answers are taken by the event loops that wait on them (their selectors watch its
    reply pipe), and also whenever a loop holds or finishes an answer (:meth:`deliver`):
    whoever takes an answer sends the next batch. No thread of this process waits on the
    writer, so a busy event loop is never interrupted to hand one the interpreter lock.
    """

    def __init__(self, audit: AuditLog):
        self.audit = audit
        self._cond = threading.Condition(threading.Lock())
        self._next = _Batch()
        self._sent: _Batch | None = None
        self._writer: WriterProcess | None = None
        self._closed = False
        # Held answers whose batch is done, per event loop: (callback, error), for that loop to call.
        self._due: dict[asyncio.AbstractEventLoop, list[tuple[Callable, BaseException | None]]] = {}
        # The event loops watching a writer's reply pipe, and which writer each watches.
        self._watchers: dict[asyncio.AbstractEventLoop, WriterProcess] = {}
        #: Batches committed and lines written, for benchmarks and tests.
        self.batches = self.lines = 0

    def submit(self, item: dict[str, Any]) -> Ticket:
        """Queue one line (the arguments of ``AuditLog.record``, ``detail`` as a dict); never blocks on disk."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the audit writer is closed")
            batch = self._next
            batch.items.append(item)
            ticket = Ticket(self, batch, len(batch.items) - 1)
            wake = self._send_next() if self._sent is None else []
        self._wake(wake)
        return ticket

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then stop the writer."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
        while time.monotonic() < deadline:
            with self._cond:
                writer = self._writer
                if self._sent is None and not self._next.items:
                    break
                wake = self._take_replies()
            self._wake(wake)
            if writer is not None:
                with contextlib.suppress(OSError, ValueError):
                    select.select([writer.replies], [], [], min(0.05, max(0.0, deadline - time.monotonic())))
        with self._cond:
            late = [b for b in (self._sent, self._next) if b is not None and b.items and not b.done]
            woken = [w for b in late for w in self._finish(b, [], OSError("the audit writer was closed first"))]
            self._drop_writer()
        self._wake(woken)

    def deliver(self) -> None:
        """On an event loop's thread: take the writer's answers that have arrived, and release
        every held answer of this loop whose batch is done."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._sent is not None:  # else no answer is due: the selector sees an ended writer
            self._look(loop)
        elif loop is not None:
            self._deliver(loop)

    def _look(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Take the writer's answers, wake the loops they finish, release ``loop``'s held answers.
        Also what a loop's selector calls when the writer's reply pipe is readable."""
        with self._cond:
            wake = self._take_replies()
        self._wake(wake, here=loop)
        if loop is not None:
            self._deliver(loop)

    def _wait(self, batch: _Batch) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        with self._cond:
            if not batch.done:
                future = batch._loops.get(loop)
                if future is None:
                    future = batch._loops[loop] = loop.create_future()
                self._watch(loop)
                return future
        future = loop.create_future()
        _settle(future, batch.error)
        return future

    def _hold(self, batch: _Batch, callback: Callable[[BaseException | None], None]) -> None:
        loop = asyncio.get_running_loop()
        with self._cond:
            if not batch.done:
                batch._held.setdefault(loop, []).append(callback)
                self._watch(loop)
                return
        callback(batch.error)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._due.get(loop):  # read without the lock: a miss is caught by the wake-up
            return
        with self._cond:
            due = self._due.pop(loop, [])
        for callback, error in due:
            try:
                callback(error)
            except Exception:  # one answer that cannot be sent must not keep the others
                logger.exception("releasing an answer held for its audit line")

    # -- under the lock ---------------------------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``'s thread: have its selector watch the current writer's replies."""
        writer = self._writer
        if writer is None or self._watchers.get(loop) is writer or loop.is_closed():
            return
        for closed in [other for other in self._watchers if other.is_closed()]:
            self._unwatched(self._watchers.pop(closed))
        old = self._watchers.pop(loop, None)
        if old is not None:
            loop.remove_reader(old.replies)
            self._unwatched(old)
        loop.add_reader(writer.replies, self._look, loop)
        writer.watched_by += 1
        self._watchers[loop] = writer

    def _watch_soon(self, batch: _Batch) -> None:
        """Have every loop waiting on ``batch`` watch the writer it was just sent to."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop in {*batch._held, *batch._loops}:
            if self._watchers.get(loop) is self._writer:
                continue
            if loop is here:
                self._watch(loop)
            else:
                with contextlib.suppress(RuntimeError):  # closed: nobody waits there any more
                    loop.call_soon_threadsafe(self._watch_locked, loop)

    def _watch_locked(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._cond:
            self._watch(loop)

    def _unwatched(self, writer: WriterProcess) -> None:
        writer.watched_by -= 1
        if writer.watched_by <= 0 and writer is not self._writer:
            writer.close_replies()

    def _send_next(self) -> list[_Woken]:
        """Send the pending batch to the writer (started if need be); the batches that failed."""
        batch, self._next = self._next, _Batch()
        if not batch.items:
            return []
        try:
            if self._writer is None:
                self._writer = WriterProcess(str(self.audit.path))
            self._writer.send(batch.items)
        except OSError as e:  # it could not start, or it has died: this batch fails, the next tries a new one
            logger.error("audit batch of %d lines not written: %s", len(batch.items), e)
            self._drop_writer()
            return self._finish(batch, [], e)
        self._sent = batch
        self._watch_soon(batch)
        return []

    def _take_replies(self) -> list[_Woken]:
        """Finish the sent batch if the writer has answered, then send the next; the batches finished."""
        writer, batch = self._writer, self._sent
        if writer is None:
            return []
        replies = writer.read()
        if replies is None:  # the writer ended
            self._drop_writer()
            if batch is None:
                return []
            error: BaseException = OSError("the audit writer stopped before the lines were written")
            logger.error("audit batch of %d lines not written: %s", len(batch.items), error)
            return self._finish(batch, [], error) + self._send_next()
        if not replies or batch is None:
            return []
        reply = replies[0]
        if "error" in reply:
            error = rebuild(reply["error"])
            logger.error("audit batch of %d lines not written: %s", len(batch.items), error)
            done = self._finish(batch, [], error)
        else:
            entries = reply["entries"]
            self.batches += 1
            self.lines += len(entries)
            done = self._finish(batch, entries, None)
        return done + self._send_next()

    def _finish(self, batch: _Batch, entries: list[AuditEntry], error: BaseException | None) -> list[_Woken]:
        if self._sent is batch:
            self._sent = None
        batch.entries, batch.error, batch.done = entries, error, True
        for loop, callbacks in batch._held.items():
            self._due.setdefault(loop, []).extend((callback, error) for callback in callbacks)
        held_loops, batch._held = list(batch._held), {}
        self._cond.notify_all()
        return [(batch, list(batch._loops.items()), held_loops)]

    def _drop_writer(self) -> None:
        """Stop the writer; its reply pipe closes once every loop watching it has let go."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        threading.Thread(target=writer.stop, args=(1.0,), name="lepton-audit-stop", daemon=True).start()
        for loop in [loop for loop, watched in self._watchers.items() if watched is writer]:
            del self._watchers[loop]
            if loop.is_closed():
                writer.watched_by -= 1
                continue
            try:
                loop.call_soon_threadsafe(self._let_go, loop, writer)
            except RuntimeError:  # closed meanwhile: its selector is gone with it
                writer.watched_by -= 1
        if writer.watched_by <= 0:
            writer.close_replies()

    def _let_go(self, loop: asyncio.AbstractEventLoop, writer: WriterProcess) -> None:
        """On ``loop``'s thread: stop watching a writer that was dropped."""
        with self._cond:
            loop.remove_reader(writer.replies)
            self._unwatched(writer)

    # -- outside the lock -------------------------------------------------------------------

    def _wake(self, woken: list[_Woken], here: asyncio.AbstractEventLoop | None = None) -> None:
        """Wake the loops waiting on finished batches: their futures, and their held answers
        (``here``, the caller's loop, releases its own held answers itself)."""
        for batch, futures, held_loops in woken:
            for loop, future in futures:
                if loop is here:
                    _settle(future, batch.error)
                    continue
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is left to wake
                    loop.call_soon_threadsafe(_settle, future, batch.error)
            for loop in held_loops:
                if loop is here:
                    continue
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._deliver, loop)


# -- holding an answer until its audit line is durable ----------------------------------------

_REFUSED = b'{"message": "the decision could not be written to the audit log; nothing was done", "reason": null}'


class _HeldConnection:
    """A request's HTTP connection that keeps what the handler writes until the audit lines are on disk.

    Stands in for ``handler.request.connection``; tornado's handler writes through
    ``write_headers``, ``write`` and ``finish``, which are queued and replayed in order
    once every awaited batch is durable. Anything else is the real connection's.
    """

    def __init__(self, request: Any, batcher: AuditBatcher):
        self._request = request
        self._real = request.connection
        self._held: list[tuple[str, tuple, asyncio.Future | None]] = []
        self._waiting = 0
        self._failed = False
        self._batcher = batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def wait_for(self, ticket: Ticket) -> None:
        self._waiting += 1
        ticket.when_durable(self._one_done)

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> asyncio.Future:
        return self._hold("write_headers", (start_line, headers, chunk))

    def write(self, chunk: bytes) -> asyncio.Future:
        return self._hold("write", (chunk,))

    def finish(self) -> None:
        self._hold("finish", ())
        # The handler is done: if its line is on disk by now, its answer need not wait a loop turn.
        self._batcher.deliver()

    def _hold(self, name: str, args: tuple) -> Any:
        future = None if name == "finish" else asyncio.get_running_loop().create_future()
        if self._failed:  # the refusal went out in place of this answer
            if future is not None:
                future.set_result(None)
            return future
        self._held.append((name, args, future))
        return future

    def _one_done(self, error: BaseException | None) -> None:
        self._waiting -= 1
        if error is not None and not self._failed:
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
    # Answers held before this one whose lines are on disk by now leave first.
    ticket.batcher.deliver()
    if not isinstance(connection, _HeldConnection):
        # In place before it waits: a line already on disk releases it at once.
        connection = request.connection = _HeldConnection(request, ticket.batcher)
    connection.wait_for(ticket)
    return True


__all__ = ["AuditBatcher", "Ticket", "hold_answer"]
