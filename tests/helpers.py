"""Helpers shared by the test modules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import psutil


def dask_children() -> list[psutil.Process]:
    """Child processes of this test run that are Dask workers or nannies."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "resource_tracker" in cmd:
            continue  # multiprocessing's helper lives as long as this process, by design
        if "multiprocessing" in cmd or "lepton_lab.cli" in cmd or "distributed" in cmd:
            out.append(p)
    return out


def eventually(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` s pass (its last value)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


def traceable() -> dict[str, str]:
    """This process's environment, for a Python process a test starts and may need to see inside.

    In such a process SIGUSR1 prints its threads' and asyncio tasks' stacks
    (tests/stacks/sitecustomize.py), and faulthandler prints every thread's stack on
    the SIGABRT that ends it (:func:`dump_stacks`).
    """
    stacks = str(Path(__file__).parent / "stacks")
    return {**os.environ, "PYTHONFAULTHANDLER": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [stacks, os.environ.get("PYTHONPATH")]))}


def dump_stacks(pid: int, wait: float = 10.0) -> None:
    """Make ``pid`` and its descendants, started with :func:`traceable`, print their stacks; then end them.

    For a process that should have done something and did not: what each of its
    threads and asyncio tasks was waiting on ends up in its stderr.
    """
    try:
        root = psutil.Process(pid)
        tree = [*reversed(root.children(recursive=True)), root]
    except psutil.NoSuchProcess:
        return
    for how in (signal.SIGUSR1, signal.SIGABRT):
        for p in tree:
            try:
                p.send_signal(how)
            except psutil.NoSuchProcess:
                pass
        time.sleep(2)
    psutil.wait_procs(tree, timeout=wait)


class Output:
    """A process's stdout and stderr, read as they come so that a full pipe never stalls it."""

    def __init__(self, proc):
        self.text = {"stdout": "", "stderr": ""}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, args=(name, getattr(proc, name)), daemon=True)
                         for name in self.text]
        for t in self._threads:
            t.start()

    def _read(self, name, stream) -> None:
        for line in stream:
            with self._lock:
                self.text[name] += line

    def has(self, name: str, needle: str, timeout: float) -> bool:
        return bool(eventually(lambda: needle in self.text[name], timeout))

    def done(self, timeout: float = 30.0) -> dict[str, str]:
        """Everything the process wrote, once both streams reached their end (the process exited)."""
        for t in self._threads:
            t.join(timeout)
        return dict(self.text)


def wait_no_dask_children(timeout: float = 15.0) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    left = dask_children()
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = dask_children()
    return left


def fake_nvml(n: int, fail_init: bool = False):
    m = types.ModuleType("pynvml")
    state = {"init": 0, "shutdown": 0}

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        state["init"] += 1

    m.nvmlInit = init
    m.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: n
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: f"Fake A100 #{h}".encode()
    m.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=40 * 2**30, used=2**30 * h)
    m.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=10.0 * h)
    m.state = state
    return m


def _worker_view(dask_scheduler) -> dict[str, tuple[float, int, str]]:
    now = time.time()
    return {str(ws.name): (now - ws.last_seen, len(ws.processing), ws.status.name)
            for ws in dask_scheduler.workers.values()}


def cluster_is_healthy(handle, names: set[str], timeout: float = 30.0, stale: float = 10.0) -> bool:
    """Whether the cluster has exactly the workers ``names``, all running, heartbeating and idle,
    waiting up to ``timeout`` seconds for it (a killed worker's nanny brings it back)."""
    end = time.monotonic() + timeout
    while True:
        try:
            view = handle.client.run_on_scheduler(_worker_view)
        except Exception:
            return False
        if set(view) == names and all(age < stale and not busy and status == "running"
                                      for age, busy, status in view.values()):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.25)


def checked_cluster(slot: dict, name: str, names: set[str], **up_kwargs):
    """The cluster kept in ``slot`` (a module-scoped dict), rebuilt when a test left it damaged."""
    import lepton_lab

    handle = slot.get("handle")
    if handle is not None and not handle.closed and cluster_is_healthy(handle, names):
        return handle
    if handle is not None:
        try:
            lepton_lab.down(name)
        except Exception:
            pass
    slot["handle"] = lepton_lab.up(name=name, **up_kwargs)
    return slot["handle"]


def sh(*cmd: str, check: bool = True):
    """Run a command; its CompletedProcess (stdout and stderr as text)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


def netns_host(prefix: str, seed: int, third_octet: int = 0):
    """A network namespace joined to this host by a veth pair, both ends in 127/8 with
    ``route_localnet`` on both sides (Linux drops 127/8 on other links otherwise).

    A context manager yielding ``{"ns", "outside", "inside", "host_ip", "ns_ip", "ip"}``;
    the namespace, the link and ``route_localnet`` are put back on exit, even on failure.
    Fails (never skips) without ``ip`` or root.
    """
    import contextlib
    import os
    import random
    import shutil

    import pytest

    @contextlib.contextmanager
    def host():
        ip = shutil.which("ip")
        if ip is None:
            pytest.fail("the `ip` command (iproute2) is missing: `apt-get install iproute2` "
                        "(the Makefile installs it); this test needs a network namespace", pytrace=False)
        if os.geteuid() != 0:
            pytest.fail("this test makes a network namespace and must run as root", pytrace=False)
        tag = f"{os.getpid() % 100000}"
        ns, outside, inside = f"lep{prefix}{tag}", f"l{prefix[:2]}o{tag}", f"l{prefix[:2]}i{tag}"
        net = random.Random(os.getpid() + seed).randint(64, 250)
        host_ip, ns_ip = f"127.{net}.{third_octet}.1", f"127.{net}.{third_octet}.2"
        saved = sh("sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()
        try:
            sh(ip, "netns", "add", ns)
            sh(ip, "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh(ip, "link", "set", inside, "netns", ns)
            sh(ip, "addr", "add", f"{host_ip}/24", "dev", outside)
            sh(ip, "link", "set", outside, "up")
            sh(ip, "netns", "exec", ns, ip, "addr", "add", f"{ns_ip}/24", "dev", inside)
            sh(ip, "netns", "exec", ns, ip, "link", "set", inside, "up")
            sh(ip, "netns", "exec", ns, ip, "link", "set", "lo", "up")
            sh("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", f"net.ipv4.conf.{outside}.route_localnet=1")
            sh(ip, "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
               f"net.ipv4.conf.{inside}.route_localnet=1")
            yield {"ns": ns, "outside": outside, "inside": inside, "host_ip": host_ip, "ns_ip": ns_ip, "ip": ip}
        finally:
            sh(ip, "link", "del", outside, check=False)
            sh(ip, "netns", "del", ns, check=False)
            sh("sysctl", "-qw", f"net.ipv4.conf.all.route_localnet={saved or 0}", check=False)
            left = sh(ip, "netns", "list", check=False).stdout
            assert ns not in left.split(), f"namespace {ns} left behind"

    return host()


def run_bench(script: str, *args: str, out: Path, timeout: float = 280) -> dict:
    """Run ``bench/<script>.py`` with ``args``, writing its JSON to ``out``; that JSON.

    It must exit 0: the failure carries the end of its standard error."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, str(root / "bench" / f"{script}.py"), *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())
