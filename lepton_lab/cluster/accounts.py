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
run as processes of its own account apart from it), no sudo is used, and one process is
kept started ahead (:data:`SPARES`): its imports done, it waits for its order, so a
cluster's scheduler does not wait for Python and Dask to load.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import getpass
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
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


class Child:
    """A started process of :data:`ENTRY`: its order goes in on standard input, and the event
    loop that runs it reads its standard output and error (any loop: a process kept ready was
    started before the loop that uses it)."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self._transports: list[asyncio.BaseTransport] = []

    async def attach(self) -> None:
        loop = asyncio.get_running_loop()
        for reader, pipe in ((self.stdout, self.popen.stdout), (self.stderr, self.popen.stderr)):
            transport, _ = await loop.connect_read_pipe(functools.partial(asyncio.StreamReaderProtocol, reader), pipe)
            self._transports.append(transport)

    def send(self, line: bytes) -> None:
        """Write ``line`` to the process (a process that already left shows it by its output's end)."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(line)
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def close_input(self) -> None:
        """Close standard input: the process's signal to leave."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except BrokenPipeError:
                pass

    async def wait(self) -> int:
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(0.05)
        return code

    def signal(self, how: str) -> None:
        """``terminate`` or ``kill`` (sudo passes the signal on to the process it runs)."""
        if self.popen.poll() is None:
            getattr(self.popen, how)()

    def detach(self) -> None:
        for transport in self._transports:
            transport.close()


def _popen(account: str) -> subprocess.Popen:
    return subprocess.Popen(command(account), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


class Spares:
    """One process of :data:`ENTRY` kept started for each account asked for, its imports done.

    The first is started with the first process an account asks for (a server that never
    starts a cluster holds none). :meth:`take` hands it out (and starts the next), with the changes to this process's
    environment since it started, which it applies before it runs: it then runs with the
    environment a process started now would have. One started under other interpreter
    settings (``PYTHON*``), or gone, is ended and a fresh one started. A process kept ready
    leaves when its standard input closes, so one this process no longer needs, or leaves
    behind when it exits, ends by itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keepers: collections.Counter[str] = collections.Counter()
        self._ready: dict[str, tuple[dict[str, str], subprocess.Popen]] = {}

    def keep(self, account: str) -> None:
        """Keep one process of ``account`` ready, from its next :meth:`take`, until as many
        :meth:`release` calls as these."""
        with self._lock:
            self._keepers[account] += 1

    def release(self, account: str) -> None:
        """One keeper of ``account`` is done; the last one's going ends the process kept ready."""
        with self._lock:
            if self._keepers[account] > 0:
                self._keepers[account] -= 1
            kept = self._ready.pop(account, None) if self._keepers[account] == 0 else None
        if kept is not None:
            _release(kept[1])

    def take(self, account: str) -> tuple[subprocess.Popen, dict[str, str | None]]:
        """A process of ``account`` waiting for its order, and the environment changes it is to
        apply (a name to its value now, or to None when unset since): the one kept ready, or a new one."""
        now = dict(os.environ)
        with self._lock:
            then, popen = self._ready.pop(account, (None, None))
            changes = _changes(then, now) if then is not None else {}
            if popen is not None and (any(k.startswith("PYTHON") for k in changes) or popen.poll() is not None):
                _release(popen)
                popen = None
            if self._keepers[account] > 0:
                self._ready[account] = (now, _popen(account))
        return (popen, changes) if popen is not None else (_popen(account), {})

    def ready(self, account: str) -> int | None:
        """The pid of the process kept ready for ``account``, if any."""
        with self._lock:
            kept = self._ready.get(account)
        return kept[1].pid if kept is not None else None


def _changes(then: dict[str, str], now: dict[str, str]) -> dict[str, str | None]:
    changed: dict[str, str | None] = {k: v for k, v in now.items() if then.get(k) != v}
    changed.update((k, None) for k in then if k not in now)
    return changed


def _release(popen: subprocess.Popen) -> None:
    """Let a process that has had no order leave: its standard input closes, it ends."""
    for pipe in (popen.stdin, popen.stdout, popen.stderr):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


#: The processes kept ready in this process.
SPARES = Spares()


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
        self.proc: Child | None = None
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
        popen, changes = SPARES.take(self.account)
        if changes:
            order["environ"] = changes
        self.proc = Child(popen)
        await self.proc.attach()
        self.proc.send(json.dumps(order).encode() + b"\n")
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
        proc.close_input()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            logger.warning("%s %s did not stop within %.0f s; ending it", self.role, self.name, STOP_GRACE)
            for how in ("terminate", "kill"):
                try:
                    proc.signal(how)
                    await asyncio.wait_for(proc.wait(), 5)
                    break
                except (ProcessLookupError, asyncio.TimeoutError):
                    continue
        for task in self._pumps:
            task.cancel()
        proc.detach()

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
