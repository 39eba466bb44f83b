"""Clusters whose scheduler and workers run under their owner's OS account.

In the team deployment the control plane holds every team's keys, so no code a
user sends may run in its process or under its account. A cluster started for a
user is a ``SpecCluster`` whose scheduler and workers are separate processes
(:mod:`lepton_lab.hub.account_process`) started as ``sudo -n -u <account>``, the
way dask-gateway's backends and JupyterHub's sudospawner start user processes.
The control plane sends each its certificate from the cluster's CA on standard
input and keeps that pipe open: closing it (or the control plane going away)
stops the process, which removes its private directory.

The account needs a sudoers rule letting the control plane's account run exactly
this command as the users, e.g. (``lepton`` runs the control plane)::

    lepton ALL=(%lepton-users) NOPASSWD: /opt/lepton/venv/bin/python -m lepton_lab.hub.account_process

When the account is the control plane's own (tests, a personal server, whose clusters
run as processes of its own account apart from it), no sudo is used.
"""

from __future__ import annotations

import asyncio
import collections
import getpass
import json
import logging
import secrets
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface

from ..errors import ClusterError
from .workers import WorkerPlan

logger = logging.getLogger(__name__)

#: The module each process runs.
ENTRY = "lepton_lab.hub.account_process"
#: Seconds a process is given to stop once its standard input closes, before it is killed.
STOP_GRACE = 20.0
#: Seconds a worker waits for a lost scheduler before it exits.
DEATH_TIMEOUT = 60
#: How long certificates of these processes stay valid.
CERT_LIFETIME = timedelta(days=7)


def command(account: str) -> list[str]:
    """The command line that runs :data:`ENTRY` as ``account``."""
    argv = [sys.executable, "-m", ENTRY]
    if account == this_account():
        return argv
    sudo = shutil.which("sudo")
    if sudo is None:
        raise ClusterError(f"starting a cluster as {account} needs sudo, which this machine does not have")
    return [sudo, "-n", "-H", "-u", account, "--", *argv]


def this_account() -> str:
    """The OS account this process runs under ("" when it has no name)."""
    try:
        return getpass.getuser()
    except Exception:
        return ""


class AccountProcess(ProcessInterface):
    """One process of :data:`ENTRY` under ``account``; ``error`` says why it failed to start."""

    role = ""
    #: The site a worker's certificate binds it to (schedulers have none).
    site: str | None = None
    kind: str | None = None

    def __init__(self, *, name: str, account: str, ca_dir: str, timeout: float, hosts: tuple[str, ...]):
        super().__init__(name=name)
        self.name = name
        self.account = account
        self.ca_dir = Path(ca_dir)
        self.timeout = timeout
        self.hosts = hosts
        self.proc: asyncio.subprocess.Process | None = None
        self.error: ClusterError | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._pumps: list[asyncio.Task] = []

    def order(self) -> dict[str, Any]:
        raise NotImplementedError

    def ready(self, line: str) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._launch(), self.timeout)
        except BaseException as e:
            self.status = Status.failed
            await self._stop()
            if isinstance(e, asyncio.CancelledError):
                raise
            if isinstance(e, asyncio.TimeoutError):
                self.error = ClusterError(f"{self.role} {self.name} as {self.account} did not start within "
                                          f"{self.timeout:.0f} s{self._last_words()}")
            elif isinstance(e, ClusterError):
                self.error = e
            else:
                self.error = ClusterError(f"{self.role} {self.name}: could not start it as {self.account}: "
                                          f"{type(e).__name__}: {e}")
            raise self.error from None
        await super().start()

    async def _launch(self) -> None:
        from ..security.certs import ClusterCA

        ca = ClusterCA.load(self.ca_dir)
        cert = ca.issue(f"{self.name}-{secrets.token_hex(3)}", self.role, self.hosts, CERT_LIFETIME,
                        site=self.site, kind=self.kind)
        order = {**self.order(), "role": self.role, "cluster": ca.cluster_id, "revoked": ca.revoked(),
                 "cert": {"ca_pem": cert.ca_pem, "cert_pem": cert.cert_pem, "key_pem": cert.key_pem}}
        self.proc = await asyncio.create_subprocess_exec(
            *command(self.account), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(order).encode() + b"\n")
        await self.proc.stdin.drain()
        self._pumps.append(asyncio.ensure_future(self._pump(self.proc.stderr, keep=True)))
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                await self.proc.wait()
                await asyncio.sleep(0.05)  # let the stderr pump take what is left
                raise ClusterError(f"{self.role} {self.name} as {self.account} exited before it was ready"
                                   f"{self._last_words()}")
            line = raw.decode(errors="replace").strip()
            logger.debug("%s: %s", self.name, line)
            if self.ready(line):
                break
        self._pumps.append(asyncio.ensure_future(self._pump(self.proc.stdout, keep=False)))

    async def _pump(self, stream: asyncio.StreamReader | None, keep: bool) -> None:
        if stream is None:
            return
        try:
            async for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if keep:
                    self._stderr.append(line)
                logger.debug("%s: %s", self.name, line)
        except Exception:
            pass

    def _last_words(self) -> str:
        lines = [ln for ln in self._stderr if ln.strip()]
        if any("sudo" in ln and "password" in ln for ln in lines):
            return (f": sudo refused; the control plane's account needs a sudoers rule to run {ENTRY} "
                    f"as {self.account}")
        return f": {lines[-1].strip()}" if lines else ""

    async def _stop(self) -> None:
        """Close the process's standard input, give it time to leave, then end it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            logger.warning("%s %s did not stop within %.0f s; ending it", self.role, self.name, STOP_GRACE)
            for signal_it in (proc.terminate, proc.kill):
                try:
                    signal_it()  # sudo passes the signal on to the process it runs
                    await asyncio.wait_for(proc.wait(), 5)
                    break
                except (ProcessLookupError, asyncio.TimeoutError):
                    continue
        for task in self._pumps:
            task.cancel()

    async def close(self) -> None:
        await self._stop()
        await super().close()


class AccountScheduler(AccountProcess):
    """The cluster's scheduler, listening with TLS on ``host``."""

    role = "scheduler"

    def __init__(self, *, host: str = "127.0.0.1", **kwargs: Any):
        super().__init__(**kwargs)
        self.host = host
        self.dashboard_port = 0

    def order(self) -> dict[str, Any]:
        return {"host": self.host}

    def ready(self, line: str) -> bool:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "lepton-scheduler":
            self.address, self.dashboard_port = parts[1], int(parts[2])
            return True
        return False


class AccountWorker(AccountProcess):
    """One ``lepton-lab worker`` of a site: exactly the worker ``plan`` describes."""

    role = "worker"

    def __init__(self, scheduler: str, *, worker_args: list[str], env: dict[str, str] | None = None,
                 site: str | None = None, kind: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.site, self.kind = site, kind
        self.scheduler = scheduler
        self.worker_args = list(worker_args)
        self.env = dict(env or {})

    def order(self) -> dict[str, Any]:
        return {"args": ["--scheduler", self.scheduler, *self.worker_args], "env": self.env}

    def ready(self, line: str) -> bool:
        return line.startswith(f"worker {self.name} ") and " joined " in line


def worker_args(plan: WorkerPlan) -> list[str]:
    """``lepton-lab worker`` arguments that start exactly ``plan`` (its name, site and shape)."""
    return [
        "--site", plan.site, "--kind", plan.kind, "--index", plan.name.rsplit("-", 1)[1],
        "--nworkers", "1", "--nthreads", str(plan.threads), "--memory-limit", str(plan.memory),
        "--gpus", "1" if plan.gpu is not None else "0", "--death-timeout", str(DEATH_TIMEOUT),
    ]


def scheduler_spec(*, name: str, account: str, ca_dir: Path, host: str, timeout: float) -> dict[str, Any]:
    hosts = tuple(sorted({"127.0.0.1", "localhost", host}))
    return {"cls": AccountScheduler, "options": {"name": f"{name}-scheduler", "account": account,
                                                  "ca_dir": str(ca_dir), "timeout": timeout, "host": host,
                                                  "hosts": hosts}}


def worker_spec(plan: WorkerPlan, *, account: str, ca_dir: Path, timeout: float) -> dict[str, Any]:
    env = {"CUDA_VISIBLE_DEVICES": devices} if (devices := plan.cuda_visible_devices) else {}
    return {"cls": AccountWorker, "options": {"name": plan.name, "account": account, "ca_dir": str(ca_dir),
                                               "timeout": timeout, "hosts": ("127.0.0.1", "localhost"),
                                               "worker_args": worker_args(plan), "env": env,
                                               "site": plan.site, "kind": plan.kind}}
