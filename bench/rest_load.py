"""Load a server the way the REST benches do: 100 requests in flight over kept-alive connections.

Shared by ``bench/server.py`` and ``bench/status_clusters.py``: the clients, the tally of
one endpoint's latencies and the server's CPU, and the percentile and spread helpers.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time

CONCURRENCY = 100
#: A REST endpoint's p99 under 100 requests at once, in milliseconds.
P99_TARGET_MS = 50.0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "blocks": [round(v, 3) for v in values]}


class KeepAliveClient:
    """A minimal HTTP/1.1 GET client over ``CONCURRENCY`` persistent asyncio connections.

    Like a browser tab, each connection is reused, so what is timed is the server's
    answer rather than TCP set-up; the client does little Python work per request.
    """

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str, token: str) -> tuple[int, float]:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                   f"Authorization: token {token}\r\nAccept: application/json\r\n\r\n").encode()
        t = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked response: this client reads Content-Length bodies only")
        await reader.readexactly(length)
        dt = time.perf_counter() - t
        self.idle.append(conn)
        return status, dt

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class TornadoClient:
    """tornado's AsyncHTTPClient (one new connection per request), ``max_clients=CONCURRENCY``."""

    def __init__(self, port: int):
        from tornado.httpclient import AsyncHTTPClient

        self.port = port
        self.http = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY)

    async def get(self, path: str, token: str) -> tuple[int, float]:
        t = time.perf_counter()
        response = await self.http.fetch(f"http://127.0.0.1:{self.port}{path}", raise_error=False,
                                         headers={"Authorization": f"token {token}"})
        return response.code, time.perf_counter() - t

    async def close(self) -> None:
        self.http.close()


class Tally:
    """Latencies, statuses, wall time, server CPU and audit lines of one endpoint's rounds."""

    def __init__(self):
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.wall = self.cpu = 0.0
        self.audit_lines = 0
        self.loads: list[float] = []

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.wall += other.wall
        self.cpu += other.cpu
        self.audit_lines += other.audit_lines
        self.loads += other.loads

    def summary(self) -> dict:
        n = len(self.latencies)
        cpu_ms = 1000 * self.cpu / n
        p99 = pct(self.latencies, 99)
        return {
            "requests": n,
            "concurrency": CONCURRENCY,
            "p50_ms": round(pct(self.latencies, 50), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(self.latencies), 2),
            "requests_per_s": round(n / self.wall, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "audit_lines_per_request": round(self.audit_lines / n, 2),
            "server_cpu_ms_per_request": round(cpu_ms, 3),
            # With 100 requests arriving together on one event loop, the 99th waits for ~98 others.
            "serial_floor_p99_ms": round(0.99 * CONCURRENCY * cpu_ms, 1),
            "load_avg_1min": round(statistics.fmean(self.loads), 2),
            "target_p99_ms": P99_TARGET_MS,
            "meets_target": p99 <= P99_TARGET_MS and set(self.statuses) == {200},
        }
