"""One scheduler or worker of a cluster, run under its owner's OS account.

The control plane of a team deployment starts this module through ``sudo -u
<account>`` (see :mod:`lepton_lab.cluster.accounts`) and writes one line of JSON
to its standard input: the role, the certificate the cluster's CA issued for
it, and the arguments of the process. Everything the process keeps lives in one
private temporary directory of that account, removed when it ends. The process
ends when its standard input closes (the control plane stopped it, or is gone),
on SIGTERM, or when its scheduler is gone. While no order is waiting it loads what
both roles need, so a process started ahead of time (``accounts.SPARES``) starts its
scheduler or worker without that wait; a process started for an order waiting on its
input loads only what its role needs. One whose input closes before any order ends
quietly.

On standard output it says, one line each: ``lepton-scheduler ADDRESS DASHBOARD_PORT``
once a scheduler listens, or the ``worker NAME ... joined ...`` line of
``lepton-lab worker`` once a worker has joined.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROLES = ("scheduler", "worker")


def _watch_stdin() -> None:
    """End this process gracefully once standard input reaches its end.

    Reads the descriptor itself, not ``sys.stdin.buffer``: a daemon thread blocked in
    the buffered reader holds its lock, and a process leaving on its own (a worker that
    refuses to start) then dies at shutdown with a fatal error in place of its reason.
    """
    def watch() -> None:
        fd = sys.stdin.fileno()
        try:
            while os.read(fd, 4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lepton-stdin", daemon=True).start()


def _write_certs(directory: Path, role: str, cert: dict[str, str]) -> tuple[str, str, str]:
    paths = (directory / "ca.crt", directory / f"{role}.crt", directory / f"{role}.key")
    for path, text in zip(paths, (cert["ca_pem"], cert["cert_pem"], cert["key_pem"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


async def _scheduler(host: str, files: tuple[str, str, str], cluster: str, revoked: list[int]) -> None:
    from distributed import Scheduler, Security

    from ..cluster.gate import SiteGate

    ca, cert, key = files
    security = Security(tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key, require_encryption=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Scheduler(host=host, port=0, protocol="tls://", security=security,
                         dashboard_address="127.0.0.1:0", plugins=[SiteGate(cluster, revoked)]) as scheduler:
        port = scheduler.http_server.port if scheduler.http_server is not None else 0
        print(f"lepton-scheduler {scheduler.address} {port}", flush=True)
        closed = asyncio.ensure_future(scheduler.finished())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([closed, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()


def _worker(args: list[str], files: tuple[str, str, str]) -> int:
    from ..cli import main as cli_main

    ca, cert, key = files
    return cli_main(["worker", *args, "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]) or 0


def run(order: dict[str, Any]) -> int:
    role = order.get("role")
    if role not in ROLES:
        print(f"lepton account process: role must be one of {', '.join(ROLES)}, got {role!r}", file=sys.stderr)
        return 2
    # Outside the event loop (which handles it while serving), SIGTERM still cleans up.
    signal.signal(signal.SIGTERM, _leave)
    old = os.umask(0o077)
    directory = Path(tempfile.mkdtemp(prefix=f"lepton-{role}-"))
    os.umask(old)
    try:
        # A process started ahead: the server's environment changed since (see accounts.Spares).
        for key, value in (order.get("environ") or {}).items():
            if value is None:
                os.environ.pop(str(key), None)
            else:
                os.environ[str(key)] = str(value)
        os.environ["LEPTON_HOME"] = str(directory / "home")
        os.environ["DASK_TEMPORARY_DIRECTORY"] = str(directory / "scratch")
        for key, value in (order.get("env") or {}).items():
            os.environ[str(key)] = str(value)
        import dask.config

        dask.config.refresh()  # Dask read the environment when it loaded, before the order
        os.chdir(directory)
        files = _write_certs(directory, role, order["cert"])
        _watch_stdin()
        if role == "scheduler":
            asyncio.run(_scheduler(str(order.get("host") or "127.0.0.1"), files, str(order.get("cluster") or ""),
                                   [int(s) for s in order.get("revoked") or []]))
            return 0
        return _worker([str(a) for a in order.get("args") or []], files)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.chdir("/")
        shutil.rmtree(directory, ignore_errors=True)


def _leave(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _load() -> None:
    """Import what a scheduler and a worker need (no device library: that is the worker's, after its order)."""
    import distributed  # noqa: F401

    from .. import cli  # noqa: F401
    from ..cluster import gate, workers  # noqa: F401

    try:  # the scheduler's dashboard: most of a scheduler's start when left to it
        import distributed.dashboard.scheduler  # noqa: F401
    except ImportError:  # no bokeh: the scheduler runs without a dashboard
        pass


def _order_waiting() -> bool:
    """Whether standard input already holds the order (or its end): a process started for one."""
    try:
        return bool(select.select([sys.stdin.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def main() -> int:
    if not _order_waiting():
        _load()  # kept ready: load now, while no one waits
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # kept ready, and not needed
    try:
        order = json.loads(line)
    except ValueError:
        print("lepton account process: expected one line of JSON on standard input", file=sys.stderr)
        return 2
    if not isinstance(order, dict):
        print("lepton account process: the order must be a JSON object", file=sys.stderr)
        return 2
    return run(order)


if __name__ == "__main__":
    sys.exit(main())
