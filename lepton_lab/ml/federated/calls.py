"""How the coordinator reaches the sites over Dask: tasks collected within a deadline, and direct calls.

A future that does not finish in time is handed back, not cancelled: while it is pending its
site counts as unavailable, so a hung or cut-off site is not asked again.
"""

from __future__ import annotations

from typing import Any, Callable

from ...errors import first_line


def short(exc: BaseException | None) -> str:
    """A failure as one short line."""
    return "no answer" if exc is None else first_line(exc, named=True, limit=160)


def collect(client, futures: dict[str, Any], timeout: float,
            stuck: dict[str, list[Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Results of the futures that finish within ``timeout``; the others as {site: reason}.

    A future that did not finish is appended to ``stuck[site]`` and kept until it does.
    """
    from distributed import wait

    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    if not futures:
        return results, failed
    try:
        wait(list(futures.values()), timeout=timeout)
    except TimeoutError:
        pass
    done = {s: f for s, f in futures.items() if f.status == "finished"}
    if done:
        results = dict(zip(done, client.gather(list(done.values()), errors="skip")))
    for site, f in futures.items():
        if site in results:
            continue
        if f.status == "error":
            failed[site] = short(f.exception(timeout=5))
        else:
            failed[site] = f"no answer within {timeout:g} s"
            stuck[site].append(f)
    return results, failed


#: How much longer than a call's own deadline the coordinator waits for a worker's answer to arrive.
ANSWER_GRACE = 2.0


async def _serve_calls(fn: Callable, by_site: dict[str, tuple], timeout: float) -> dict[str, tuple[str, Any]]:
    """On one worker: each of its sites' calls, bounded by ``timeout``; {site: (failure, result)}.

    A coroutine function runs on the worker's event loop, so it must never block: a
    quick call costs no thread hop. Any other function runs in a thread, so that one
    that blocks keeps the worker's event loop (and its other sites' calls) going.
    """
    import asyncio
    import inspect

    on_loop = inspect.iscoroutinefunction(fn)

    async def one(call: tuple):
        return await asyncio.wait_for(fn(*call) if on_loop else asyncio.to_thread(fn, *call), timeout)

    outs = await asyncio.gather(*(one(c) for c in by_site.values()), return_exceptions=True)
    return {site: ((_why(out, timeout), None) if isinstance(out, BaseException) else ("", out))
            for site, out in zip(by_site, outs)}


async def _serve_here(fn: Callable, by_address: dict[str, dict[str, tuple]], timeout: float, dask_worker=None):
    """The calls meant for this worker, picked by its address from one broadcast."""
    return await _serve_calls(fn, by_address.get(dask_worker.address, {}), timeout)


def _why(exc: BaseException | None, timeout: float) -> str:
    import asyncio

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {timeout:g} s"
    return short(exc)


def rpc(client, fn, calls: dict[str, tuple[str, tuple]],
        timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Call ``fn(*call)`` on each site's worker directly, each bounded by ``timeout``.

    ``calls`` maps each site to ``(worker address, call arguments)``. ``fn`` runs on the
    worker's event loop if it is a coroutine function, in a thread otherwise (see
    :func:`_serve_calls`).

    The secure-aggregation control messages (keys, shares, unmasking) carry no data
    and need no placement, so they go as one ``Client.run`` broadcast through the
    scheduler rather than as tasks, each worker picking its own calls and bounding
    them itself: one trip for every site, not one per site. A worker that does not
    answer at all (its link cut) would hold up the whole broadcast: then each worker
    is asked on its own, so the others' answers count.
    """
    import asyncio

    by_address: dict[str, dict[str, tuple]] = {}
    for site, (addr, call) in calls.items():
        by_address.setdefault(addr, {})[site] = call
    if not by_address:
        return {}, {}

    async def broadcast():
        return await asyncio.wait_for(
            client.run(_serve_here, fn, by_address, timeout, workers=list(by_address), on_error="return",
                       asynchronous=True), timeout + ANSWER_GRACE)

    try:
        outs = client.sync(broadcast)
    except (asyncio.TimeoutError, TimeoutError):
        outs = _each(client, fn, by_address, timeout)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for addr, sites in by_address.items():
        answer = outs.get(addr)
        for site in sites:
            if not isinstance(answer, dict) or site not in answer:
                failed[site] = _why(answer if isinstance(answer, BaseException) else None, timeout)
                continue
            why, value = answer[site]
            if why:
                failed[site] = why
            else:
                results[site] = value
    return results, failed


def _each(client, fn, by_address: dict[str, dict[str, tuple]], timeout: float) -> dict[str, Any]:
    """Each worker asked on its own, each within ``timeout``: {address: its answers, or why none came}."""
    import asyncio

    async def one(addr: str, by_site: dict[str, tuple]):
        out = await asyncio.wait_for(
            client.run(_serve_calls, fn, by_site, timeout, workers=[addr], on_error="return", asynchronous=True),
            timeout + ANSWER_GRACE)
        return out.get(addr) if isinstance(out, dict) else out

    async def every():
        outs = await asyncio.gather(*(one(a, c) for a, c in by_address.items()), return_exceptions=True)
        return dict(zip(by_address, outs))

    return client.sync(every)
