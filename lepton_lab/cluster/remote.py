"""Run a cell's code as a task on a worker of a chosen site, with its output streamed back.

The code is compiled under the cell's own file name, so a traceback from the worker
points at the cell's lines. Names the code reads are taken from the caller's
namespace and shipped with the task (Dask futures are passed as task arguments,
so they resolve on the worker and never travel through the kernel). What the
code prints is sent back as it is printed through Dask's event topics.
"""

from __future__ import annotations

import ast
import builtins
import io
import queue
import sys
import threading
import types
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import dask
from distributed import Client, Future, get_worker

from ..errors import ConfigError
from .interrupt import stop_job
from .workers import on_site, workers_now

#: Seconds of buffered output before a partial line is flushed anyway.
FLUSH_INTERVAL = 0.2


def names_read(code: str) -> set[str]:
    """Every bare name the code loads (a superset of what it needs from outside)."""
    tree = ast.parse(code)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def names_assigned(code: str) -> set[str]:
    tree = ast.parse(code)
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in n.names)
    return out


def _shippable(value: Any) -> bool:
    # Modules travel by name and are imported on the worker instead.
    return not isinstance(value, types.ModuleType)


# -- worker side ------------------------------------------------------------------------------


class _ThreadRouter(io.TextIOBase):
    """A ``sys.stdout``/``sys.stderr`` stand-in that sends each task thread's writes to its own sink.

    Threads without a sink (the worker itself, other tasks) write where they always did.
    """

    def __init__(self, original):
        self.original = original
        self.sinks: dict[int, Callable[[str], None]] = {}

    def write(self, text: str) -> int:
        sink = self.sinks.get(threading.get_ident())
        if sink is None:
            return self.original.write(text)
        sink(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() not in self.sinks:
            self.original.flush()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def isatty(self) -> bool:
        return False


_router_lock = threading.Lock()


def _router(stream_name: str) -> _ThreadRouter:
    with _router_lock:
        current = getattr(sys, stream_name)
        if not isinstance(current, _ThreadRouter):
            current = _ThreadRouter(current)
            setattr(sys, stream_name, current)
        return current


class _Publisher:
    """Buffers a stream's text and sends it as worker events, line by line or every FLUSH_INTERVAL."""

    def __init__(self, worker, topic: str, stream: str):
        self.worker, self.topic, self.stream = worker, topic, stream
        self.buffer = ""
        self.last = 0.0

    def __call__(self, text: str) -> None:
        import time

        self.buffer += text
        now = time.monotonic()
        if "\n" in self.buffer or now - self.last > FLUSH_INTERVAL:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.buffer:
            self.worker.log_event(self.topic, {"stream": self.stream, "text": self.buffer})
            self.buffer = ""


def _execute(code: str, filename: str, topic: str, returns: list[str], inputs: dict[str, Any],
             modules: dict[str, str]) -> dict[str, Any]:
    """The task: run ``code`` with ``inputs`` on this worker; return the requested names."""
    import importlib

    worker = get_worker()
    namespace: dict[str, Any] = {"__name__": "__lepton_cell__", "__builtins__": builtins}
    for alias, module in modules.items():
        namespace[alias] = importlib.import_module(module)
    namespace.update(inputs)
    publishers = {name: _Publisher(worker, topic, name) for name in ("stdout", "stderr")}
    ident = threading.get_ident()
    routers = {name: _router(name) for name in publishers}
    for name, router in routers.items():
        router.sinks[ident] = publishers[name]
    try:
        exec(compile(code, filename, "exec"), namespace)
    finally:
        for name, router in routers.items():
            router.sinks.pop(ident, None)
            publishers[name].flush()
    missing = [n for n in returns if n not in namespace]
    if missing:
        raise NameError(f"--return names not defined by the cell: {', '.join(missing)}")
    return {n: namespace[n] for n in returns}


# -- client side ------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a remote cell gave back: the returned names, where it ran, and its output."""

    values: dict[str, Any]
    worker: str
    site: str
    job: str
    output: list[tuple[str, str]] = field(default_factory=list)


def run_code(
    client: Client,
    code: str,
    *,
    site: str,
    namespace: dict[str, Any] | None = None,
    gpus: int = 0,
    job: str | None = None,
    returns: Iterable[str] = (),
    filename: str = "<lepton-cell>",
    echo: Callable[[str, str], None] | None = None,
    timeout: float | None = None,
) -> RunResult:
    """Run ``code`` as one task on a worker of ``site`` and wait for it.

    ``echo(stream, text)`` receives the worker's printed output as it arrives
    (default: this process's stdout/stderr). An exception in the code is raised
    here with its traceback pointing at ``filename``'s lines.
    """
    namespace = namespace or {}
    returns = [r for r in returns if r]
    try:
        read = names_read(code)
    except SyntaxError as e:
        raise ConfigError(f"the cell does not parse: {e.msg} (line {e.lineno})") from None
    for r in returns:
        if not r.isidentifier():
            raise ConfigError(f"--return: {r!r} is not a Python name")
    _check_site(client, site, gpus)

    inputs, modules = {}, {}
    for name in sorted(read):
        if name not in namespace or name.startswith("__"):
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
        elif _shippable(value):
            inputs[name] = value

    job = job or "cell"
    topic = f"lepton-run-{uuid.uuid4().hex}"
    key = f"{job}-{uuid.uuid4().hex[:12]}"
    lines: "queue.Queue[tuple[str, str]]" = queue.Queue()
    client.subscribe_topic(topic, lambda event: lines.put((event[1]["stream"], event[1]["text"])))
    output: list[tuple[str, str]] = []
    echo = echo or _default_echo

    def drain() -> None:
        while True:
            try:
                stream, text = lines.get_nowait()
            except queue.Empty:
                return
            output.append((stream, text))
            echo(stream, text)

    future: Future | None = None
    try:
        try:
            with dask.annotate(job=job):
                future = client.submit(
                    _execute, code, filename, topic, returns, inputs, modules,
                    key=key, resources=on_site(site, gpus), pure=False,
                )
            waited = 0.0
            while not future.done():
                drain()
                try:
                    future.result(timeout=0.1)
                except TimeoutError:
                    waited += 0.1
                    if timeout is not None and waited > timeout:
                        future.cancel()
                        raise TimeoutError(f"the cell did not finish on {site} within {timeout:g} s") from None
                except Exception:
                    break
        except KeyboardInterrupt:
            drain()
            raise stop_job(client, job, futures=[future], keys=[key]) from None
        who = client.who_has(future).get(future.key) or ()
        try:
            values = future.result()
        finally:
            _settle(client, lines)
            drain()
    finally:
        client.unsubscribe_topic(topic)
    worker_addr = who[0] if who else ""
    info = workers_now(client).get(worker_addr, {}) if worker_addr else {}
    return RunResult(values, str(info.get("name", worker_addr)), site, job, output)


def _settle(client: Client, lines: "queue.Queue") -> None:
    # Worker events travel on their own stream; give the last ones a moment to land.
    import time

    end = time.monotonic() + 0.5
    last = lines.qsize()
    while time.monotonic() < end:
        time.sleep(0.05)
        if lines.qsize() == last:
            break
        last = lines.qsize()


def _default_echo(stream: str, text: str) -> None:
    (sys.stderr if stream == "stderr" else sys.stdout).write(text)


def _check_site(client: Client, site: str, gpus: int) -> None:
    workers = workers_now(client).values()
    need = on_site(site, gpus)
    ok = [w for w in workers if all(w.get("resources", {}).get(r, 0) >= n for r, n in need.items())]
    if not ok:
        known = sorted({r for w in workers for r in w.get("resources", {}) if r != "GPU"})
        what = f"site {site!r}" + (f" with {gpus} GPU(s)" if gpus else "")
        raise ConfigError(f"no worker on {what} (sites: {', '.join(known) or 'none'})")
