"""One PyTorch training rank: its loop, and the child process a data-parallel rank runs in.

A rank of a data-parallel (``DistributedDataParallel``) training runs in a child
process of its Dask worker, never in the worker's own interpreter. torch's gloo
process group joins its threads when it is destroyed; if that happens while the
GIL is held (the group dies with the DDP module, at the end of the task) and a
gloo thread is still freeing a finished collective's tensors, which needs the
GIL, both wait for each other for ever: the worker's event loop stops, the
worker stops heartbeating and no other task runs there. In a child process the
process group lives and dies with one job: the child sends its result and ends
with ``os._exit`` (no teardown that could block), a cancelled task kills its
child at once, and a rank stuck in a collective is killed without restarting
the worker.

A rank reports what it is doing as it goes (``phase``) in small "beat" messages,
at most one a second, from its training loop; the kernel's watchdog names the
rank, its worker and its last phase when one falls silent.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np

from ..errors import first_line
from . import progress as _progress
from .checkpoints import save_checkpoint
from .metrics import holdout_metrics

#: Seconds between two beats of a rank (phase changes are sent at once).
BEAT_INTERVAL = 1.0
#: Seconds a child gets to start and load torch before the task gives up on it.
CHILD_START_TIMEOUT = 300.0


class RankError(RuntimeError):
    """A rank failed; the message names the rank, its worker and the phase it was in."""


def build_module(model_spec: dict[str, Any]) -> Any:
    """A fresh ``nn.Module`` from what ``train`` was given (a module, a spec, a factory)."""
    kind, value = model_spec["kind"], model_spec["value"]
    if kind == "module":
        return copy.deepcopy(value)
    if kind == "spec":
        from ..registry.modelspec import build_model

        return build_model(value).train()
    return value()


def evaluate(model: Any, X: Any, y: Any, task: str, device: Any) -> dict[str, float]:
    """Holdout metrics of ``model`` on tensors ``X``, ``y``."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(X), 4096):
            outs.append(model(X[i:i + 4096].to(device)).float().cpu())
    model.train()
    out = torch.cat(outs)
    if task == "binary":
        prob = torch.sigmoid(out.reshape(-1)) if out.shape[-1] == 1 or out.dim() == 1 else torch.softmax(out, 1)[:, 1]
        return holdout_metrics(task, y.numpy(), prob.numpy())
    if task == "multiclass":
        return holdout_metrics(task, y.numpy(), out.numpy())
    return holdout_metrics(task, y.numpy(), out.reshape(len(out), -1)[:, 0].numpy())


def loss_of(task: str, out: Any, y: Any) -> Any:
    import torch.nn.functional as F

    if task == "regression":
        return F.mse_loss(out.reshape(len(out), -1)[:, 0], y)
    if task == "binary" and (out.dim() == 1 or out.shape[-1] == 1):
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.float())
    return F.cross_entropy(out, y.long())


def param_digest(model: Any) -> str:
    """SHA-256 over a model's parameters: equal on every rank after a data-parallel step."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Beats:
    """A data-parallel rank's phase, sent to the kernel at most every BEAT_INTERVAL seconds
    (``force`` for the few phases between steps: starting, rendezvous, done). A rank
    training alone sends none: its progress events are all the watchdog needs."""

    def __init__(self, report: Callable[[dict[str, Any]], None] | None, spec: dict[str, Any], rank: int):
        self.report = report
        self.base = {"run": spec["run"], "attempt": spec.get("attempt", 0), "beat": True, "rank": rank,
                     "worker_name": spec.get("worker_name", "")}
        self.sent = 0.0

    def __call__(self, phase: str, force: bool = False) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if force or now - self.sent >= BEAT_INTERVAL:
            self.sent = now
            self.report({**self.base, "phase": phase})


def train_rank(rank: int, world: int, X: np.ndarray, y: np.ndarray, X_test: Any, y_test: Any,
               spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train one rank; rank 0 evaluates, reports progress and writes checkpoints.

    With ``world > 1`` this joins the process group given by ``spec`` and must run
    in a process of its own (see :func:`run_rank`).
    """
    import torch
    import torch.distributed as dist

    beat = _Beats(report if world > 1 else None, spec, rank)
    beat("starting", force=True)
    torch.set_num_threads(int(spec["nthread"]))  # the nanny set OMP_NUM_THREADS=1
    gpu = spec["gpu"] and torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(0)
    torch.manual_seed(spec["seed"])
    model = build_module(spec["model"]).to(device)
    opt_cls = torch.optim.Adam if spec["optimizer"] == "adam" else torch.optim.SGD
    opt = opt_cls(model.parameters(), lr=spec["lr"])
    start, history = 0, []
    if spec.get("resume"):
        state = torch.load(io.BytesIO(spec["resume"]), map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), list(state["history"])
    task = spec["task"]
    label_dtype = np.float32 if task == "regression" else np.int64
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=label_dtype))
    if X_test is not None:
        Xv = torch.from_numpy(np.ascontiguousarray(X_test, dtype=np.float32))
        yv = torch.from_numpy(np.ascontiguousarray(y_test, dtype=label_dtype))
    net = model
    if world > 1:
        beat("rendezvous", force=True)
        dist.init_process_group(spec["backend"], init_method=spec["init_method"], rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=spec["collective_timeout"]))
        from torch.nn.parallel import DistributedDataParallel

        beat("wrapping the model (first broadcast)", force=True)
        net = DistributedDataParallel(model, device_ids=[0] if gpu else None)
    batch = max(1, spec["batch_size"] // world)
    gen = torch.Generator()
    worker = spec.get("worker_name", "")
    ckpt = spec["checkpoints"]
    for epoch in range(start, spec["epochs"]):
        gen.manual_seed(spec["seed"] * 100_003 + epoch * 7919 + rank)
        perm = torch.randperm(len(Xt), generator=gen)
        total, count = 0.0, 0
        net.train()
        steps = (len(perm) + batch - 1) // batch
        for step, i in enumerate(range(0, len(perm), batch)):
            beat(f"epoch {epoch + 1}/{spec['epochs']}, step {step + 1}/{steps}", force=step == 0)
            idx = perm[i:i + batch]
            xb, yb = Xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_of(task, net(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if world > 1:
            beat(f"epoch {epoch + 1}/{spec['epochs']}, all_reduce of the loss")
            # On the rank's own device: nccl reduces CUDA tensors only.
            t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        if rank == 0:
            beat(f"epoch {epoch + 1}/{spec['epochs']}, evaluating")
            row = {"epoch": epoch + 1, "loss": total / max(count, 1), **evaluate(model, Xv, yv, task, device)}
            history.append(row)
            report({"run": spec["run"], "epoch": epoch + 1, "total": spec["epochs"],
                    "metrics": {k: v for k, v in row.items() if k != "epoch"}, "rows": [row],
                    "worker_name": worker})
            every = ckpt.get("every", 0)
            if every and ((epoch + 1) % every == 0 or epoch + 1 == spec["epochs"]):
                beat(f"epoch {epoch + 1}/{spec['epochs']}, checkpoint")
                state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history}
                save_checkpoint(ckpt, "torch", epoch + 1, lambda f: torch.save(state, f), history)
    beat("done", force=True)
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"rank": rank, "worker": worker, "threads": int(spec["nthread"]), "pid": os.getpid(),
            "digest": param_digest(model), "state": cpu_state if rank == 0 else None,
            "history": history if rank == 0 else None}


# -- the Dask task ------------------------------------------------------------------------------


def _send(conn: Connection, obj: Any) -> None:
    # cloudpickle, as Dask ships tasks: a model class defined in the notebook travels by value.
    # (multiprocessing's own pickler would hand torch tensors over as shared-memory handles,
    # which a process that is not its multiprocessing child cannot open.)
    import cloudpickle

    conn.send_bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())



def _worker_and_key() -> tuple[Any, Any]:
    from distributed import get_worker
    from distributed.worker import thread_state

    try:
        return get_worker(), getattr(thread_state, "key", None)
    except ValueError:  # called outside a worker (a plain function call)
        return None, None


def _cancelled(worker: Any, key: Any) -> bool:
    """Whether the scheduler took this task back (cancelled, the kernel gone, a restart)."""
    if worker is None:
        return False
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state != "executing"


def run_rank(rank: int, world: int, X: np.ndarray, y: np.ndarray, X_test: Any, y_test: Any,
             spec: dict[str, Any]) -> dict[str, Any]:
    """The Dask task of one rank: in this thread when alone, in a child process under DDP."""
    spec = {**spec, "worker_name": _progress.worker_name()}
    report = lambda msg: _progress.post(spec["topic"], msg)  # noqa: E731
    if world == 1:
        return train_rank(rank, world, X, y, X_test, y_test, spec, report)
    return _in_child(rank, world, (X, y, X_test, y_test), spec, report)


def _in_child(rank: int, world: int, data: tuple, spec: dict[str, Any],
              report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    worker, key = _worker_and_key()
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    if spec["backend"] == "gloo" and spec["host"] in ("127.0.0.1", "localhost"):
        # On one machine gloo must talk over loopback, whatever the hostname resolves to.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    child = subprocess.Popen([sys.executable, "-m", "lepton_lab.ml.torch_rank", str(theirs.fileno())],
                             pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
    theirs.close()
    conn = Connection(ours.detach())
    phase = "starting"
    where = f"rank {rank} on {spec.get('worker_name') or 'its worker'}"
    try:
        _send(conn, (rank, world, data, spec))
        while True:
            if _cancelled(worker, key):
                raise RankError(f"{where}: cancelled in phase {phase!r}")
            if not conn.poll(0.2):
                if child.poll() is not None:
                    raise RankError(f"{where}: the rank's process ended (exit code {child.returncode}) "
                                    f"in phase {phase!r}")
                continue
            try:
                kind, payload = _recv(conn)
            except (EOFError, OSError):
                child.wait(timeout=10)
                raise RankError(f"{where}: the rank's process ended (exit code {child.returncode}) "
                                f"in phase {phase!r}") from None
            if kind == "report":
                if payload.get("beat"):
                    phase = payload.get("phase", phase)
                report(payload)
            elif kind == "error":
                raise RankError(f"{where} failed in phase {phase!r}: {payload}")
            elif kind == "result":
                import torch

                state = payload.pop("state_bytes", None)
                payload["state"] = torch.load(io.BytesIO(state), weights_only=True) if state else None
                return payload
    finally:
        conn.close()
        if child.poll() is None:
            child.kill()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


# -- the child process --------------------------------------------------------------------------


def _die_with_parent() -> None:
    """End this process when the worker that started it goes (killed, restarted, crashed)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="lepton-rank-parent-watch").start()


def main(fd: int) -> None:
    """Run one rank for the worker on the other end of socket ``fd``, then exit at once."""
    _die_with_parent()
    conn = Connection(fd)
    try:
        rank, world, (X, y, X_test, y_test), spec = _recv(conn)

        def report(msg: dict[str, Any]) -> None:
            _send(conn, ("report", msg))

        out = train_rank(rank, world, X, y, X_test, y_test, spec, report)
        state = out.pop("state")
        if state is not None:
            import torch

            buf = io.BytesIO()
            torch.save(state, buf)
            out["state_bytes"] = buf.getvalue()
        _send(conn, ("result", out))
        code = 0
    except BaseException as e:  # everything goes back to the task as one line
        try:
            _send(conn, ("error", first_line(e, named=True, limit=500)))
        except OSError:
            pass
        code = 1
    try:
        conn.close()
    finally:
        # No interpreter teardown: the process group and its threads go with the process.
        os._exit(code)


if __name__ == "__main__":
    main(int(sys.argv[1]))
