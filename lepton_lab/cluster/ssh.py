"""Workers of ``launch: ssh`` sites: started on their hosts over SSH, stopped without a trace.

Each worker is one ``python -m lepton_lab.cli worker`` process on a host of its
site (worker ``n`` on ``hosts[n % len(hosts)]``): the command a machine joining
by hand runs, given a fresh worker certificate from the cluster's CA. It is a
:class:`distributed.deploy.ssh.Worker` (asyncssh, as ``SSHCluster`` uses), so the
cluster's ``SpecCluster`` starts, retires and closes it like a local nanny.

On the host everything lives in one private temporary directory (certificate,
key, Dask scratch space, ``LEPTON_HOME``). Stopping the worker ends its process
group and removes the directory; a worker left alone when its scheduler goes
away exits after ``--death-timeout`` and removes the directory itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import secrets
import shlex
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

from distributed.core import Status
from distributed.deploy import ssh as dask_ssh
from distributed.deploy.spec import ProcessInterface

from ..errors import ClusterError, ConfigError
from .profiles import Profile, SiteSpec
from .workers import WorkerPlan

logger = logging.getLogger(__name__)

#: Seconds an SSH connection may take to open.
CONNECT_TIMEOUT = 30.0
#: Seconds a stopped worker is given to leave on its own before its processes are killed.
STOP_GRACE = 30
#: Seconds a worker waits for a lost scheduler before it exits (and cleans up after itself).
DEATH_TIMEOUT = 60
#: How long a worker certificate handed to a host stays valid.
CERT_LIFETIME = timedelta(days=7)

_PIDS = re.compile(r"^lepton-ssh-pids (\d+) (\d+)$")


def split_host(host: str) -> tuple[str, int]:
    """``(host, port)`` from ``host`` or ``host:port`` (IPv6 in brackets); port 22 by default."""
    if host.rfind(":") > host.rfind("]"):
        name, _, port = host.rpartition(":")
        return name.strip("[]"), int(port)
    return host.strip("[]"), 22


def host_of(plan: WorkerPlan, site: SiteSpec) -> str:
    """The host worker ``<site>-<n>`` runs on: ``hosts[n % len(hosts)]``."""
    n = int(plan.name.rsplit("-", 1)[1])
    return site.hosts[n % len(site.hosts)]


def check_ssh_sites(profile: Profile, *, tls: bool, ca_dir: Path | None) -> None:
    """A one-line ConfigError unless every ``launch: ssh`` site of ``profile`` can be started."""
    for site in profile.sites:
        if site.launch != "ssh":
            continue
        if not tls or ca_dir is None:
            raise ConfigError(f"site {site.name} starts workers over ssh and needs a cluster with TLS "
                              "and its own CA (start it through the Lepton server)")
        for key in ("ssh_key", "known_hosts"):
            path = getattr(site, key)
            if path and not Path(path).expanduser().is_file():
                raise ConfigError(f"site {site.name}: {key} {path}: no such file")


def connect_options(site: SiteSpec, port: int) -> dict[str, Any]:
    """asyncssh ``connect`` options for ``site``; unset fields keep ssh's own defaults."""
    options: dict[str, Any] = {"port": port, "connect_timeout": CONNECT_TIMEOUT}
    if site.ssh_user:
        options["username"] = site.ssh_user
    if site.ssh_key:
        options["client_keys"] = [str(Path(site.ssh_key).expanduser())]
    if site.known_hosts:
        options["known_hosts"] = str(Path(site.known_hosts).expanduser())
    return options


def ssh_worker_spec(plan: WorkerPlan, site: SiteSpec, scheduler: str, ca_dir: Path | None,
                    timeout: float) -> dict[str, Any]:
    """A ``SpecCluster`` worker spec that starts ``plan`` on its host of ``site`` over SSH."""
    if ca_dir is None:
        raise ConfigError(f"site {site.name} starts workers over ssh and needs a cluster with its own CA")
    host, port = split_host(host_of(plan, site))
    return {
        "cls": SSHSiteWorker,
        "options": {
            "name": plan.name,
            "host": host,
            "scheduler_address": scheduler,
            "connect_options": connect_options(site, port),
            "python": site.python,
            "worker_args": _worker_args(plan),
            "site": plan.site,
            "kind": plan.kind,
            "ca_dir": str(ca_dir),
            "timeout": timeout,
        },
    }


def _worker_args(plan: WorkerPlan) -> list[str]:
    """``lepton-lab worker`` arguments that start exactly ``plan`` (its name, site and shape)."""
    return [
        "--site", plan.site, "--kind", plan.kind, "--index", plan.name.rsplit("-", 1)[1],
        "--nworkers", "1", "--nthreads", str(plan.threads), "--memory-limit", str(plan.memory),
        "--gpus", "0", "--death-timeout", str(DEATH_TIMEOUT),
        "--tls-ca-file", "ca.crt", "--tls-cert", "worker.crt", "--tls-key", "worker.key",
    ]


def _kill_quietly(proc: Any) -> None:
    try:
        proc.kill()
    except OSError:  # the session has ended already
        pass


class SSHSiteWorker(dask_ssh.Worker):
    """One ``lepton-lab worker`` on a remote host, run over an asyncssh connection.

    ``remote_dir`` is its directory on the host while it runs; ``error`` says why it failed to start.
    """

    def __init__(self, scheduler: str, *, name: str, host: str, scheduler_address: str,
                 connect_options: dict[str, Any], python: str, worker_args: list[str], site: str,
                 ca_dir: str, timeout: float, kind: str | None = None):
        super().__init__(scheduler_address or scheduler, host, connect_options, {}, name=name,
                         remote_python=python)
        self.site = site
        self.kind = kind
        self.worker_args = list(worker_args)
        self.ca_dir = Path(ca_dir)
        self.timeout = timeout
        self.remote_dir = ""
        self.error: ClusterError | None = None
        self.pids: tuple[int, int] | None = None  # (wrapper shell = process group, worker process)
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._pumps: list[asyncio.Task] = []
        self._finalizer: weakref.finalize | None = None

    @property
    def where(self) -> str:
        port = self.connect_options.get("port", 22)
        return f"{self.address}:{port}"

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._launch(), self.timeout)
        except BaseException as e:
            self.status = Status.failed
            await self._stop_remote()
            self._close_connection()
            if isinstance(e, asyncio.CancelledError):
                raise
            if isinstance(e, asyncio.TimeoutError):
                self.error = ClusterError(f"worker {self.name} on {self.where} did not start within "
                                          f"{self.timeout:.0f} s{self._last_words()}")
            elif isinstance(e, ClusterError):
                self.error = e
            else:
                self.error = ClusterError(f"worker {self.name}: could not start it on {self.where} over ssh: "
                                          f"{type(e).__name__}: {e}")
            raise self.error from None
        # As distributed's ssh.Process does, end the session if this object is dropped unclosed.
        self._finalizer = weakref.finalize(self, _kill_quietly, self.proc)
        await ProcessInterface.start(self)

    async def _launch(self) -> None:
        import asyncssh

        from ..security.certs import ClusterCA

        self.connection = await asyncssh.connect(self.address, **self.connect_options)
        made = await self.connection.run(
            'umask 077 && mktemp -d "${TMPDIR:-/tmp}/lepton-worker.XXXXXXXX"', check=True)
        self.remote_dir = str(made.stdout).strip()
        if not self.remote_dir.startswith("/"):
            raise ClusterError(f"worker {self.name}: mktemp on {self.where} gave {self.remote_dir!r}")
        cert = ClusterCA.load(self.ca_dir).issue(
            f"{self.site}-worker-{secrets.token_hex(3)}", "worker", (self.address,), CERT_LIFETIME,
            site=self.site, kind=self.kind)
        d = shlex.quote(self.remote_dir)
        for filename, text in (("ca.crt", cert.ca_pem), ("worker.crt", cert.cert_pem),
                               ("worker.key", cert.key_pem)):
            await self.connection.run(f"umask 077 && cat > {d}/{filename}", input=text, check=True)
        self.proc = await self.connection.create_process(self._command())
        self._pumps.append(asyncio.ensure_future(self._pump_stderr()))
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await asyncio.sleep(0)  # let the stderr pump take what is left
                raise ClusterError(f"worker {self.name} on {self.where} exited before joining"
                                   f"{self._last_words()}")
            line = line.strip()
            logger.debug("%s: %s", self.name, line)
            pids = _PIDS.match(line)
            if pids:
                self.pids = (int(pids[1]), int(pids[2]))
            elif line.startswith(f"worker {self.name} ") and " joined " in line:
                break
        self._pumps.append(asyncio.ensure_future(self._pump_stdout()))

    def _command(self) -> str:
        """The shell command run on the host: the worker in the background, its pids, then clean-up."""
        d = shlex.quote(self.remote_dir)
        env = f"LEPTON_HOME={d}/home DASK_TEMPORARY_DIRECTORY={d}/scratch"
        args = " ".join(shlex.quote(a) for a in ["--scheduler", self.scheduler, *self.worker_args])
        return (
            f"cd {d} || exit 1; "
            f"{env} {self.remote_python} -m lepton_lab.cli worker {args} </dev/null & "
            f'echo "lepton-ssh-pids $$ $!"; wait $!; s=$?; cd /; rm -rf {d}; exit $s'
        )

    async def _pump_stderr(self) -> None:
        try:
            async for line in self.proc.stderr:
                self._stderr.append(line.rstrip())
                logger.debug("%s: %s", self.name, line.rstrip())
        except Exception:  # the channel closed under us
            pass

    async def _pump_stdout(self) -> None:
        try:
            async for line in self.proc.stdout:
                logger.debug("%s: %s", self.name, line.rstrip())
        except Exception:
            pass

    def _last_words(self) -> str:
        lines = [ln for ln in self._stderr if ln.strip()]
        return f": {lines[-1].strip()}" if lines else ""

    async def _stop_remote(self) -> None:
        """End the worker's processes on the host (gently, then its whole group) and remove its directory."""
        if self.connection is None or not self.remote_dir:
            return
        d = shlex.quote(self.remote_dir)
        script = f"rm -rf {d}"
        if self.pids is not None:
            group, worker = self.pids
            script = (
                f"kill -TERM {worker} 2>/dev/null; i=0; "
                f"while kill -0 {worker} 2>/dev/null && [ $i -lt {STOP_GRACE * 10} ]; do sleep 0.1; i=$((i+1)); done; "
                f"kill -KILL -- -{group} 2>/dev/null; {script}"
            )
        try:
            await asyncio.wait_for(self.connection.run(script), STOP_GRACE + CONNECT_TIMEOUT)
            self.remote_dir = ""
            self.pids = None
        except Exception as e:
            logger.warning("worker %s: could not clean up %s on %s: %s", self.name, self.remote_dir,
                           self.where, e)

    def _close_connection(self) -> None:
        for task in self._pumps:
            task.cancel()
        if self.connection is not None:
            self.connection.close()

    async def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        await self._stop_remote()
        if self.proc is not None and self.proc.exit_status is not None:
            self.proc = None  # nothing left to signal
        try:
            await super().close()
        except Exception as e:  # the session is gone already
            logger.debug("worker %s: %s", self.name, e)
            self._close_connection()
            await ProcessInterface.close(self)
        for task in self._pumps:
            task.cancel()
