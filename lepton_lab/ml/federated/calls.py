"""How the coordinator reaches the sites over Dask: tasks collected within a deadline, and direct calls.

A future that does not finish in time is handed back, not cancelled: while it is pending its
site counts as unavailable, so a hung or cut-off site is not asked again.
"""

from __future__ import annotations

from typing import Any, Callable


def site_workers(client, site: str) -> list[str]:
    """Addresses of the workers that hold ``site``'s resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(a for a, w in workers.items() if (w.get("resources") or {}).get(site, 0) > 0)


def short(exc: BaseException | None) -> str:
    """A failure as one short line."""
    if exc is None:
        return "no answer"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


async def _in_thread(fn: Callable, *args):
    """Run ``fn`` off the worker's event loop, so a slow site never stalls its heartbeats."""
    import asyncio

    return await asyncio.to_thread(fn, *args)


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


def rpc(client, fn, calls: dict[str, tuple[str, tuple]],
        timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Call ``fn(*call)`` on each site's worker directly, each bounded by ``timeout``.

    ``calls`` maps each site to ``(worker address, call arguments)``.

    The secure-aggregation control messages (keys, shares, unmasking) carry no data
    and need no placement, so they go as ``Client.run`` calls through the scheduler
    rather than as tasks: about 6 ms instead of 30 ms a trip on a small machine.
    """
    import asyncio

    async def one(addr: str, call: tuple):
        return await asyncio.wait_for(
            client.run(_in_thread, fn, *call, workers=[addr], on_error="return", asynchronous=True), timeout)

    async def every(calls: dict[str, tuple[str, tuple]]):
        outs = await asyncio.gather(*(one(a, c) for a, c in calls.values()), return_exceptions=True)
        return dict(zip(calls, outs))

    outs = client.sync(every, calls) if calls else {}
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for site, out in outs.items():
        if isinstance(out, (asyncio.TimeoutError, TimeoutError)):
            failed[site] = f"no answer within {timeout:g} s"
        elif isinstance(out, BaseException):
            failed[site] = short(out)
        else:
            value = out.get(calls[site][0]) if isinstance(out, dict) else None
            if isinstance(value, BaseException) or value is None:
                failed[site] = short(value)
            else:
                results[site] = value
    return results, failed
