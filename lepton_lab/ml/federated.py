"""Federated training across edge sites whose raw data may not leave them.

``federate(model, loader=load_site, sites=[...])`` trains ``model`` with FedAvg or
FedProx on the analyst's Dask cluster, the way Flower does across real devices:

* **Data stays on its site.** ``loader(site)`` runs in a task pinned to that site
  (``resources=on_site(site)``); its result stays in that worker's memory as a Dask
  key that is never gathered. Every training task of the site takes that key as input
  and is pinned to the worker that holds it (``workers=[address]``,
  ``allow_other_workers=False``), so the data never travels. Sites return only model
  updates (masked, with secure aggregation) and a few metrics computed on the site;
  examples and per-example gradients never leave. Should the worker die, Dask reloads
  the key on another worker *of the same site* (the resource restriction stays).
* **FedAvg / FedProx.** Each round a sample of the sites (``fraction``, seeded, at
  least ``min_sites``, as Flower samples) trains ``local_epochs`` on its own data from
  the global weights; FedProx adds ``mu/2 * ||w - w_global||^2`` to the local loss. The
  coordinator averages the updates weighted by sample counts.
* **Secure aggregation** (``secure=True``, the default): SecAgg with double masking and
  dropout recovery (:mod:`lepton_lab.ml.secagg`). Sites send ``[n_i * update_i, n_i]``
  in fixed point, masked; the coordinator learns only the sum, and checks that the
  summed count is the sum of the sites' sample counts before using it. A site that
  vanishes after the key shares went out is recovered, not redone: the others' shares
  rebuild its mask key, its pairwise masks are removed and **the round completes with
  the remaining sites**; its keys are burned and every site makes new ones next round.
  The protocol's control messages (keys, shares, unmasking) carry no data and go as
  direct ``Client.run`` calls rather than tasks: a fifth of the latency.
* **Differential privacy** (``dp=DPConfig(...)``): central DP at the site level
  (:mod:`lepton_lab.ml.privacy`): sites clip their update to ``clip`` on the site, the
  coordinator adds Gaussian noise ``noise_multiplier * clip`` to the securely
  aggregated sum and divides by a fixed denominator; an RDP accountant reports ε for
  ``delta`` after every round. With ``fraction < 1`` sites are then Poisson-sampled,
  which is what the accountant's amplification assumes. Per-site metrics are reported
  outside that guarantee.
* **Bounded rounds.** Each phase of a round (key setup, local training, unmasking)
  waits at most ``round_timeout`` seconds (unmasking a quarter of it, at least 5 s); a
  site that does not answer is recorded as dropped and, while its task hangs or its
  heartbeats are stale, is not asked again. When fewer than ``min_sites`` updates
  arrive the round is **skipped** as Flower does with failures: the global model keeps
  its weights and the history says why. A run whose data loads on fewer than
  ``min_sites`` sites fails at once with a one-line :class:`FederatedError`.
"""

from __future__ import annotations

import copy
import html
import logging
import math
import secrets
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lepton_lab.cluster.interrupt import stop_job
from lepton_lab.errors import ConfigError, LeptonError
from lepton_lab.ml.privacy import DPConfig, RDPAccountant, clip_update
from lepton_lab.ml.secagg import (
    Roster,
    SecAggCoordinator,
    SecAggError,
    SiteSecAgg,
    dequantize,
    quantize,
    threshold_for,
)

__all__ = [
    "DPConfig",
    "FederatedError",
    "FederatedResult",
    "RoundRecord",
    "clear_faults",
    "federate",
    "get_vector",
    "inject_fault",
    "set_vector",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("fedavg", "fedprox")
LOSSES = ("auto", "binary", "multiclass", "mse")
OPTIMIZERS = ("sgd", "adam")
#: Rounds one set of secure-aggregation keys serves before the sites make new ones.
EPOCH_ROUNDS = 50
#: A site whose worker has not sent a heartbeat for this long (relative to the freshest
#: worker) is unavailable: its link is down even if the scheduler has not noticed yet.
STALE_AFTER = 8.0
#: Seconds loading may take by default: a site's first task also imports PyTorch there.
LOAD_TIMEOUT = 120.0
#: Phases of a round, as history and :func:`inject_fault` name them.
PHASES = ("load", "keys", "share", "train", "unmask")


class FederatedError(LeptonError):
    """A federated run cannot start or go on (too few sites, a loader that fails everywhere)."""

    status = 409


# =============================================================================== model vectors


def _float_keys(model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if torch.is_floating_point(v)]


def get_vector(model: nn.Module) -> np.ndarray:
    """The model's floating-point state (parameters and float buffers) as one float64 vector."""
    sd = model.state_dict()
    keys = _float_keys(model)
    if not keys:
        return np.zeros(0)
    return torch.cat([sd[k].detach().reshape(-1).to(torch.float64).cpu() for k in keys]).numpy()


def set_vector(model: nn.Module, vector: np.ndarray) -> nn.Module:
    """Load a vector made by :func:`get_vector` back into ``model`` (in place)."""
    sd = model.state_dict()
    offset = 0
    with torch.no_grad():
        for k in _float_keys(model):
            t = sd[k]
            n = t.numel()
            t.copy_(torch.from_numpy(np.asarray(vector[offset:offset + n])).reshape(t.shape).to(t.dtype))
            offset += n
    if offset != len(vector):
        raise ConfigError(f"weight vector has {len(vector)} values, the model {offset}")
    return model


# =============================================================================== local training


def _loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.reshape(-1).to(out.dtype))
    if kind == "multiclass":
        return F.cross_entropy(out, y.reshape(-1).long())
    return F.mse_loss(out.reshape(y.shape) if out.numel() == y.numel() else out, y.to(out.dtype))


def _metrics(model: nn.Module, X: torch.Tensor, y: torch.Tensor, kind: str) -> dict[str, float]:
    """Loss (and accuracy for classifiers) of ``model`` on ``(X, y)``."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(X)
        m = {"loss": float(_loss(out, y, kind))}
        if kind == "binary":
            m["accuracy"] = float(((out.reshape(-1) > 0).long() == y.reshape(-1).long()).float().mean())
        elif kind == "multiclass":
            m["accuracy"] = float((out.argmax(-1) == y.reshape(-1).long()).float().mean())
    model.train(was)
    return m


class _Optimizer:
    """SGD with momentum, or Adam, in a few tensor operations.

    ``torch.optim`` imports TorchDynamo and SymPy on first use: about 75 MB more on
    every site, where a 512 MiB edge worker pauses at 410 MB. These are the same update
    rules (PyTorch's SGD momentum form; Adam with bias correction).
    """

    def __init__(self, params: list[torch.Tensor], cfg: dict):
        self.params, self.kind, self.lr = params, cfg["optimizer"], cfg["lr"]
        self.momentum = cfg["momentum"]
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params] if self.kind == "adam" else []

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.kind == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                self.m[i].mul_(b1).add_(g, alpha=1 - b1)
                self.v[i].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = self.m[i] / (1 - b1**self.t)
                v_hat = self.v[i] / (1 - b2**self.t)
                p.addcdiv_(m_hat, v_hat.sqrt().add_(eps), value=-self.lr)
            else:
                if self.momentum:
                    buf = self.m[i]
                    if self.t == 1:
                        buf.copy_(g)
                    else:
                        buf.mul_(self.momentum).add_(g)
                    g = buf
                p.add_(g, alpha=-self.lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def _train_local(model: nn.Module, X: torch.Tensor, y: torch.Tensor, cfg: dict, seed: int) -> float:
    """Local epochs of minibatch training; FedProx adds the proximal term. Returns the last epoch's mean loss."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]
    opt = _Optimizer(params, cfg)
    mu = cfg["mu"] if cfg["strategy"] == "fedprox" else 0.0
    n, bs = len(X), cfg["batch_size"]
    model.train()
    last = 0.0
    for _ in range(cfg["local_epochs"]):
        total, seen = 0.0, 0
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            loss = _loss(model(X[idx]), y[idx], cfg["kind"])
            total += loss.item() * len(idx)
            seen += len(idx)
            if mu > 0:
                loss = loss + (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            opt.zero_grad()
            loss.backward()
            opt.step()
        last = total / max(seen, 1)
    return last


# =============================================================================== the site's side
#
# Everything below up to the coordinator runs inside a site's worker process. A site's
# data, its raw update, its private keys and its seeds live only here.


class SiteData:
    """What ``loader(site)`` returned, as tensors. Never gathered; its repr shows counts only."""

    def __init__(self, site: str, X: torch.Tensor, y: torch.Tensor):
        self.site, self.X, self.y = site, X, y

    def __len__(self) -> int:
        return len(self.X)

    def __repr__(self) -> str:
        return f"<SiteData {self.site}: {len(self.X)} samples>"


_state_lock = threading.Lock()
_STATE: dict[tuple[str, str], dict[str, Any]] = {}  # (run id, site) -> keys of the site, per epoch
_FAULTS: dict[str, list[dict[str, Any]]] = {}  # site -> armed faults (testing aid)


def _site_state(run_id: str, site: str) -> dict[str, Any]:
    with _state_lock:
        return _STATE.setdefault((run_id, site), {"epochs": {}})


def _fault(site: str, phase: str, round_no: int) -> None:
    for f in _FAULTS.get(site, ()):
        if f["phase"] == phase and (f["rounds"] is None or round_no in f["rounds"]):
            if f["mode"] == "hang":
                time.sleep(f["seconds"])
            raise RuntimeError(f"injected fault: site {site} fails in {phase} of round {round_no}")


def _worker_name() -> tuple[str, str]:
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.name), w.address
    except ValueError:
        return "local", ""


def _site_load(loader: Callable, site: str) -> SiteData:
    _fault(site, "load", 0)
    out = loader(site)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ConfigError(f"loader({site!r}) must return (X, y), got {type(out).__name__}")
    X, y = (torch.as_tensor(np.asarray(v)) for v in out)
    if X.ndim < 2 or len(X) != len(y) or len(X) == 0:
        raise ConfigError(f"loader({site!r}) returned X of shape {tuple(X.shape)} and y of {tuple(y.shape)}; "
                          "want X (n, features...) and y (n,) with n > 0")
    return SiteData(site, X.to(torch.float32), y)


def _site_describe(data: SiteData) -> dict[str, Any]:
    """Counts and shapes of a site's data, and where it lives: never a value of it."""
    name, address = _worker_name()
    return {"site": data.site, "worker": name, "address": address, "samples": len(data),
            "features": list(data.X.shape[1:])}


def _site_keys(run_id: str, site: str, epoch: int, context: bytes) -> tuple[bytes, bytes]:
    _fault(site, "keys", epoch)
    state = _site_state(run_id, site)
    agent = SiteSecAgg(site, context)
    state["epochs"] = {epoch: agent}  # older epochs' keys are dropped: they are burned or done
    return agent.advertise()


def _site_share(run_id: str, site: str, epoch: int, roster: Roster):
    _fault(site, "share", epoch)
    agent = _site_state(run_id, site)["epochs"].get(epoch)
    if agent is None:
        raise SecAggError(f"site {site} holds no keys for epoch {epoch}")
    return agent.share(roster)


def _site_round(data: SiteData, template: nn.Module, global_vec: np.ndarray, cfg: dict, run_id: str,
                round_no: int, secure: dict | None) -> dict[str, Any]:
    """Train on this site's data and return the (masked) update and local metrics."""
    site = data.site
    _fault(site, "train", round_no)
    model = set_vector(copy.deepcopy(template), global_vec)
    seed = (cfg["seed"] * 1_000_003 + round_no * 7919 + cfg["site_index"][site]) % 2**31
    train_loss = _train_local(model, data.X, data.y, cfg, seed)
    metrics = {"samples": len(data), "train_loss": train_loss, **_metrics(model, data.X, data.y, cfg["kind"])}
    delta = get_vector(model) - global_vec
    if cfg["clip"] is not None:
        delta, norm = clip_update(delta, cfg["clip"])
        metrics["update_norm"] = norm
        vector = np.concatenate([delta, [1.0]])
    else:
        vector = np.concatenate([len(data) * delta, [float(len(data))]])
    if not np.all(np.isfinite(vector)):
        raise FloatingPointError(f"site {site}: the local update is not finite; lower the learning rate")
    if secure is None:
        return {"metrics": metrics, "vector": vector}
    agent = _site_state(run_id, site)["epochs"].get(secure["epoch"])
    if agent is None:
        raise SecAggError(f"site {site} holds no keys for epoch {secure['epoch']}")
    if secure.get("inbox"):
        agent.receive(secure["inbox"])
    ring = quantize(vector, parties=len(secure["participants"]))
    return {"metrics": metrics, "vector": agent.mask(ring, round_no, secure["participants"])}


def _site_unmask(run_id: str, site: str, epoch: int, round_no: int, survivors: list[str],
                 dropped: list[str], inbox: dict | None):
    _fault(site, "unmask", round_no)
    agent = _site_state(run_id, site)["epochs"].get(epoch)
    if agent is None:
        raise SecAggError(f"site {site} holds no keys for epoch {epoch}")
    if inbox:
        agent.receive(inbox)
    return agent.unmask(round_no, survivors, dropped)


def _site_forget(run_id: str) -> int:
    with _state_lock:
        gone = [k for k in _STATE if k[0] == run_id]
        for k in gone:
            del _STATE[k]
    return len(gone)


async def _in_thread(fn: Callable, *args):
    """Run ``fn`` off the worker's event loop, so a slow site never stalls its heartbeats."""
    import asyncio

    return await asyncio.to_thread(fn, *args)


def _arm_fault(site: str, phase: str, rounds: list[int] | None, mode: str, seconds: float) -> None:
    _FAULTS.setdefault(site, []).append({"phase": phase, "rounds": None if rounds is None else set(rounds),
                                         "mode": mode, "seconds": seconds})


def _disarm_faults() -> None:
    _FAULTS.clear()


def inject_fault(client, site: str, phase: str, rounds: Iterable[int] | None = None, *,
                 mode: str = "raise", seconds: float = 30.0) -> list[str]:
    """Testing aid (chaos): make ``site``'s workers fail in ``phase`` of ``rounds``.

    ``mode="raise"`` fails the task at once; ``"hang"`` sleeps ``seconds`` first, as a
    site whose link is slow or gone. Phases: load, keys, share, train, unmask (for
    keys and share, ``rounds`` counts key epochs). Returns the worker addresses armed.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r} (phases: {', '.join(PHASES)})")
    if mode not in ("raise", "hang"):
        raise ConfigError(f"unknown fault mode {mode!r} (raise or hang)")
    addrs = _site_workers(client, site)
    if not addrs:
        raise ConfigError(f"no worker of site {site!r} to arm")
    client.run(_arm_fault, site, phase, None if rounds is None else sorted(rounds), mode, seconds,
               workers=addrs)
    return addrs


def clear_faults(client) -> None:
    """Disarm every fault :func:`inject_fault` armed on the cluster's workers."""
    client.run(_disarm_faults)


# =============================================================================== results


@dataclass
class RoundRecord:
    """One round as the coordinator saw it. Counts and metrics only, never a sample."""

    round: int
    sites: list[str]  # sampled for the round
    aggregated: list[str]  # whose updates are in the new global model
    dropped: dict[str, str]  # site -> "phase: reason"
    unavailable: list[str]
    site_metrics: dict[str, dict[str, float]]
    global_metrics: dict[str, float]
    epsilon: float | None
    skipped: str | None  # why the global model was left as it was, if it was
    rekeyed: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: keys, train, unmask, eval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FederatedResult:
    """The outcome of :func:`federate`: the global model, per-round history, privacy and lineage."""

    model: nn.Module
    history: list[RoundRecord]
    rounds: int
    strategy: str
    secure: bool
    dp: dict[str, Any] | None
    sites: list[str]
    lineage: dict[str, Any]
    name: str = ""
    seconds: float = 0.0

    @property
    def completed_rounds(self) -> int:
        return sum(1 for r in self.history if r.skipped is None)

    @property
    def dropped_sites(self) -> dict[int, dict[str, str]]:
        """Round -> {site: reason} for every round where a site dropped."""
        return {r.round: dict(r.dropped) for r in self.history if r.dropped}

    @property
    def epsilon(self) -> float | None:
        return None if self.dp is None else self.dp["epsilon"]

    def metric(self, name: str = "accuracy") -> list[float | None]:
        """The global metric after each round (None where there was no eval data)."""
        return [r.global_metrics.get(name) for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rounds": self.rounds, "strategy": self.strategy, "secure": self.secure,
                "dp": self.dp, "sites": self.sites, "seconds": self.seconds,
                "history": [r.to_dict() for r in self.history], "lineage": self.lineage}

    def __repr__(self) -> str:
        acc = next((r.global_metrics.get("accuracy") for r in reversed(self.history) if r.global_metrics), None)
        eps = f", ε={self.dp['epsilon']:.2f} (δ={self.dp['delta']:g})" if self.dp else ""
        acc_s = f", accuracy {acc:.3f}" if acc is not None else ""
        return (f"<FederatedResult {self.name!r} {self.strategy} {'secure ' if self.secure else ''}"
                f"{self.completed_rounds}/{self.rounds} rounds over {len(self.sites)} sites{acc_s}{eps}>")

    def _repr_html_(self) -> str:
        e = html.escape
        head = ["round", "aggregated", "dropped", "local accuracy", "global loss", "global accuracy", "ε", "s"]
        rows = []
        for r in self.history:
            local = ", ".join(f"{e(s)} {m['accuracy']:.3f}" for s, m in sorted(r.site_metrics.items())
                              if "accuracy" in m)
            dropped = "; ".join(f"{e(s)} ({e(why)})" for s, why in r.dropped.items())
            if r.skipped:
                dropped = (dropped + "; " if dropped else "") + f"<b>skipped</b>: {e(r.skipped)}"
            g = r.global_metrics
            rows.append([str(r.round), e(", ".join(r.aggregated)), dropped, local,
                         f"{g['loss']:.4f}" if "loss" in g else "",
                         f"{g['accuracy']:.4f}" if "accuracy" in g else "",
                         f"{r.epsilon:.3f}" if r.epsilon is not None else "", f"{r.seconds:.2f}"])
        table = "".join(f"<th style='text-align:left'>{h}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in row) + "</tr>"
                       for row in rows)
        dp = (f"central DP, clip {self.dp['clip']:g}, noise ×{self.dp['noise_multiplier']:g}: "
              f"ε = {self.dp['epsilon']:.3f} at δ = {self.dp['delta']:g}") if self.dp else "no DP"
        samples = ", ".join(f"{e(s['site'])}: {s['samples']}" for s in self.lineage.get("sites", []))
        return (f"<div><b>Federated run {e(self.name)}</b>: {e(self.strategy)}, "
                f"{'secure aggregation' if self.secure else 'plain aggregation'}, {dp}; "
                f"{self.completed_rounds}/{self.rounds} rounds in {self.seconds:.1f} s; samples per site "
                f"(counts only) {samples}"
                f"<table><thead><tr>{table}</tr></thead><tbody>{body}</tbody></table></div>")


# =============================================================================== the coordinator


@dataclass
class _Placement:
    site: str
    data: Any  # the Dask future of the site's data: never gathered
    address: str
    worker: str
    samples: int
    features: list[int]
    template: Any = None  # the model template scattered to that worker
    rounds: list[int] = field(default_factory=list)
    dropped_in: list[int] = field(default_factory=list)


@dataclass
class _Epoch:
    number: int
    coordinator: SecAggCoordinator
    rounds: tuple[int, ...]


def _site_workers(client, site: str) -> list[str]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(a for a, w in workers.items() if (w.get("resources") or {}).get(site, 0) > 0)


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _as_dp(dp) -> DPConfig | None:
    if dp is None or dp is False:
        return None
    if dp is True:
        return DPConfig()
    if isinstance(dp, DPConfig):
        return dp
    if isinstance(dp, dict):
        try:
            return DPConfig(**dp)
        except TypeError as e:
            raise ConfigError(f"dp: {e}") from None
    raise ConfigError(f"dp must be None, True, a DPConfig or a dict, got {type(dp).__name__}")


def _check_args(model, loader, sites, rounds, local_epochs, strategy, mu, lr, batch_size, fraction, min_sites,
                secure, round_timeout, optimizer, loss) -> list[str]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loader):
        raise ConfigError("loader must be a function loader(site) -> (X, y) that runs on the site")
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",") if s.strip()]
    sites = list(dict.fromkeys(sites or []))
    if not sites or not all(isinstance(s, str) and s for s in sites):
        raise ConfigError("sites must name at least one site, e.g. ['edge-hospital-a', 'edge-hospital-b']")

    def whole(v, lo, what):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{what} must be a whole number >= {lo}, got {v!r}")

    whole(rounds, 1, "rounds")
    whole(local_epochs, 1, "local_epochs")
    whole(batch_size, 1, "batch_size")
    whole(min_sites, 1, "min_sites")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} (strategies: {', '.join(STRATEGIES)})")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r} ({', '.join(OPTIMIZERS)})")
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r} ({', '.join(LOSSES)})")
    for value, what in ((mu, "mu"), (lr, "lr"), (round_timeout, "round_timeout")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{what} must be a number >= 0, got {value!r}")
    if lr <= 0 or round_timeout <= 0:
        raise ConfigError("lr and round_timeout must be positive")
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    if min_sites > len(sites):
        raise ConfigError(f"min_sites={min_sites} but only {len(sites)} sites are named")
    if secure and min_sites < 2:
        raise ConfigError("secure aggregation needs min_sites >= 2: the sum of one site is that site's update")
    return sites


class _Run:
    """The coordinator of one federated run (runs in the analyst's process)."""

    def __init__(self, client, model, *, loader, sites, rounds, local_epochs, strategy, mu, lr, batch_size,
                 optimizer, momentum, fraction, min_sites, secure, dp, eval_data, progress, seed,
                 round_timeout, load_timeout, name, loss, on_round):
        self.client = client
        self.model = copy.deepcopy(model).cpu()
        self.loader, self.sites, self.rounds = loader, sites, rounds
        self.strategy, self.secure, self.dp = strategy, secure, dp
        self.fraction, self.min_sites = float(fraction), min_sites
        self.round_timeout = float(round_timeout)
        self.load_timeout = max(self.round_timeout, LOAD_TIMEOUT) if load_timeout is None else float(load_timeout)
        self.unmask_timeout = min(self.round_timeout, max(5.0, self.round_timeout / 4))
        self.name = name
        self.run_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.progress, self.on_round = progress, on_round
        self.rng = np.random.default_rng(seed)
        # DP noise comes from the OS: a known seed must not let anyone subtract it.
        self.noise_rng = np.random.default_rng(secrets.randbits(128))
        self.accountant = RDPAccountant() if dp else None
        self.poisson = dp is not None and self.fraction < 1
        self.cfg = {"local_epochs": local_epochs, "lr": float(lr), "batch_size": batch_size, "optimizer": optimizer,
                    "momentum": float(momentum), "strategy": strategy, "mu": float(mu), "seed": int(seed),
                    "clip": dp.clip if dp else None, "kind": loss,
                    "site_index": {s: i for i, s in enumerate(sites)}}
        self.eval_data = eval_data
        self.places: dict[str, _Placement] = {}
        self.stuck: dict[str, list[Any]] = {s: [] for s in sites}
        self.load_failures: dict[str, str] = {}
        self.epoch: _Epoch | None = None
        self.epochs = 0
        self.history: list[RoundRecord] = []
        self.vector = get_vector(self.model)

    # -- plumbing ----------------------------------------------------------------------

    def _key(self, what: str, site: str, round_no: int | str = "") -> str:
        return f"federated-{what}-{self.name}-{site}-{round_no}-{uuid.uuid4().hex[:8]}"

    def _pinned(self, fn, *args, site: str, what: str, round_no: int | str = ""):
        """A task on the worker that holds ``site``'s data, and nowhere else."""
        p = self.places[site]
        return self.client.submit(fn, *args, key=self._key(what, site, round_no), workers=[p.address],
                                  allow_other_workers=False, pure=False)

    def _collect(self, futures: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
        """Results of the futures that finish within ``timeout``; the others as {site: reason}.

        A future that did not finish is kept (not cancelled) until it does: while it is
        pending its site counts as unavailable, so a hung or cut-off site is not asked again.
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
            results = dict(zip(done, self.client.gather(list(done.values()), errors="skip")))
        for site, f in futures.items():
            if site in results:
                continue
            if f.status == "error":
                failed[site] = _short(f.exception(timeout=5))
            else:
                failed[site] = f"no answer within {timeout:g} s"
                self.stuck[site].append(f)
        return results, failed

    def _rpc(self, fn, args: dict[str, tuple], timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
        """Call ``fn(*args[site])`` on each site's worker directly, each bounded by ``timeout``.

        The secure-aggregation control messages (keys, shares, unmasking) carry no data
        and need no placement, so they go as ``Client.run`` calls through the scheduler
        rather than as tasks: about 6 ms instead of 30 ms a trip on a small machine.
        """
        import asyncio

        client = self.client

        async def one(addr: str, call: tuple):
            return await asyncio.wait_for(
                client.run(_in_thread, fn, *call, workers=[addr], on_error="return", asynchronous=True), timeout)

        async def every(calls: dict[str, tuple[str, tuple]]):
            outs = await asyncio.gather(*(one(a, c) for a, c in calls.values()), return_exceptions=True)
            return dict(zip(calls, outs))

        calls = {site: (self.places[site].address, call) for site, call in args.items()}
        outs = client.sync(every, calls) if calls else {}
        results: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for site, out in outs.items():
            if isinstance(out, (asyncio.TimeoutError, TimeoutError)):
                failed[site] = f"no answer within {timeout:g} s"
            elif isinstance(out, BaseException):
                failed[site] = _short(out)
            else:
                value = out.get(calls[site][0]) if isinstance(out, dict) else None
                if isinstance(value, BaseException) or value is None:
                    failed[site] = _short(value)
                else:
                    results[site] = value
        return results, failed

    # -- bringing the sites' data up --------------------------------------------------

    def load(self) -> None:
        from distributed import wait

        missing = [s for s in self.sites if not _site_workers(self.client, s)]
        known = sorted({r for w in self.client.scheduler_info(n_workers=-1)["workers"].values()
                        for r in (w.get("resources") or {}) if r not in ("cloud", "edge", "GPU")})
        if missing:
            raise FederatedError(f"no worker of site {', '.join(missing)} in this cluster "
                                 f"(sites with workers: {', '.join(known) or 'none'}); check the names or "
                                 "join a machine with `lepton-lab worker --site NAME`")
        from lepton_lab.cluster.workers import on_site

        data = {s: self.client.submit(_site_load, self.loader, s, key=self._key("data", s), resources=on_site(s),
                                      pure=False) for s in self.sites}
        described = {s: self.client.submit(_site_describe, f, key=self._key("describe", s), resources=on_site(s),
                                           pure=False) for s, f in data.items()}
        info, failed = self._collect(described, self.load_timeout)
        for site in list(failed):
            f = data[site]
            if f.status == "error":
                failed[site] = "loader failed: " + _short(f.exception(timeout=5))
        self.load_failures = failed
        for site in self.sites:
            if site in info:
                d = info[site]
                self.places[site] = _Placement(site, data[site], d["address"], d["worker"], d["samples"],
                                               d["features"])
            else:
                data[site].cancel()
        if len(self.places) < self.min_sites:
            why = "; ".join(f"{s}: {r}" for s, r in failed.items())
            raise FederatedError(f"data loaded on {len(self.places)} of {len(self.sites)} sites, fewer than "
                                 f"min_sites={self.min_sites} ({why})")
        shapes = {tuple(p.features) for p in self.places.values()}
        if len(shapes) > 1:
            raise FederatedError("the sites' data differ in feature shape: "
                                 + ", ".join(f"{p.site} {p.features}" for p in self.places.values()))
        self._resolve_kind(next(iter(shapes)))
        templates = {s: self.client.scatter(self.model, workers=[p.address], hash=False)
                     for s, p in self.places.items()}
        wait(list(templates.values()), timeout=self.load_timeout)
        for s, t in templates.items():
            self.places[s].template = t

    def _resolve_kind(self, features: tuple[int, ...]) -> None:
        if self.cfg["kind"] != "auto":
            return
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(torch.zeros((2, *features)))
        except Exception as e:
            raise ConfigError(f"the model does not take the sites' inputs of shape {list(features)}: {e}") from None
        finally:
            self.model.train(was)
        self.cfg["kind"] = "binary" if out.ndim == 1 or out.shape[-1] == 1 else "multiclass"

    # -- which sites can take part -------------------------------------------------------

    def available(self) -> list[str]:
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        fresh = max((w.get("last_seen", 0) for w in workers.values()), default=0)
        out = []
        for site, p in self.places.items():
            self.stuck[site] = [f for f in self.stuck[site] if not f.done()]
            if self.stuck[site]:
                continue
            w = workers.get(p.address)
            if w is None and not self._relocate(p, workers):
                continue
            w = workers[p.address]
            if w.get("status", "running") != "running" or fresh - w.get("last_seen", fresh) > STALE_AFTER:
                continue
            out.append(site)
        return out

    def _relocate(self, p: _Placement, workers: dict) -> bool:
        """The worker that held a site's data is gone: find where Dask reloaded it (same site)."""
        holders = [a for a in self.client.who_has([p.data]).get(p.data.key, ()) if a in workers]
        if not holders:
            return False
        p.address = holders[0]
        p.worker = str(workers[p.address].get("name", p.address))
        p.template = self.client.scatter(self.model, workers=[p.address], hash=False)
        return True

    def sample(self, available: list[str]) -> list[str]:
        if self.poisson:
            picked = [s for s in self.sites if self.rng.random() < self.fraction]
            return [s for s in picked if s in available]
        if not available:
            return []
        m = min(len(available), max(self.min_sites, math.ceil(self.fraction * len(available))))
        if m == len(available):
            return list(available)
        idx = self.rng.choice(len(available), size=m, replace=False)
        return [available[i] for i in sorted(idx)]

    # -- secure aggregation key epochs ---------------------------------------------------

    def _need_rekey(self, round_no: int, sampled: list[str]) -> bool:
        e = self.epoch
        return (e is None or bool(e.coordinator.burned) or round_no not in e.rounds
                or any(s not in e.coordinator.keyed for s in sampled))

    def rekey(self, round_no: int, available: list[str], dropped: dict[str, str]) -> None:
        """A new epoch: every available site makes keys and shares its secrets with the others."""
        self.epoch = None
        self.epochs += 1
        number = self.epochs
        context = f"{self.run_id}|{number}".encode()
        keys, failed = self._rpc(_site_keys, {s: (self.run_id, s, number, context) for s in available},
                                 self.round_timeout)
        dropped.update({s: f"keys: {why}" for s, why in failed.items()})
        if len(keys) < max(2, self.min_sites):
            return
        order = sorted(keys, key=self.sites.index)
        last = min(self.rounds, round_no + EPOCH_ROUNDS - 1)
        roster = Roster(context, {s: (i + 1, *keys[s]) for i, s in enumerate(order)}, threshold_for(len(order)),
                        tuple(range(round_no, last + 1)))
        shares, failed = self._rpc(_site_share, {s: (self.run_id, s, number, roster) for s in order},
                                   self.round_timeout)
        dropped.update({s: f"share: {why}" for s, why in failed.items()})
        coordinator = SecAggCoordinator(roster)
        for s, (outbox, commitments) in shares.items():
            coordinator.route(s, outbox, commitments)
        if len(coordinator.keyed) >= max(roster.threshold, self.min_sites):
            self.epoch = _Epoch(number, coordinator, roster.rounds)

    # -- one round -------------------------------------------------------------------------

    def round(self, round_no: int) -> RoundRecord:
        t0 = time.perf_counter()
        available = self.available()
        unavailable = [s for s in self.sites if s not in available]
        sampled = self.sample(available)
        rec = RoundRecord(round_no, sampled, [], {}, unavailable, {}, {}, None, None, False, 0.0)
        try:
            self._round(rec, available)
        finally:
            if self.accountant is not None:
                # Every round is charged, run or skipped: a conservative count.
                q = self.fraction if self.poisson else 1.0
                self.accountant.step(noise_multiplier=self.dp.noise_multiplier, sample_rate=q)
                rec.epsilon = self.accountant.epsilon(self.dp.delta)
            t = time.perf_counter()
            rec.global_metrics = self.evaluate()
            rec.timings["eval"] = round(time.perf_counter() - t, 4)
            rec.seconds = round(time.perf_counter() - t0, 4)
            for s in rec.aggregated:
                self.places[s].rounds.append(round_no)
            for s in rec.dropped:
                if s in self.places:
                    self.places[s].dropped_in.append(round_no)
            if rec.dropped:
                logger.warning("federated %s round %d: dropped %s", self.name, round_no,
                               "; ".join(f"{s} ({why})" for s, why in rec.dropped.items()))
            if rec.skipped:
                logger.warning("federated %s round %d skipped: %s", self.name, round_no, rec.skipped)
        return rec

    def _round(self, rec: RoundRecord, available: list[str]) -> None:
        r, sampled = rec.round, rec.sites
        if len(sampled) < self.min_sites:
            rec.skipped = (f"{len(sampled)} sites sampled of {len(available)} available, fewer than "
                           f"min_sites={self.min_sites}")
            return
        epoch = None
        participants = list(sampled)
        if self.secure:
            if self._need_rekey(r, sampled):
                t = time.perf_counter()
                self.rekey(r, available, rec.dropped)
                rec.timings["keys"] = round(time.perf_counter() - t, 4)
                rec.rekeyed = True
            epoch = self.epoch
            if epoch is None:
                rec.skipped = "too few sites completed the secure-aggregation key exchange"
                return
            participants = [s for s in sampled if s in epoch.coordinator.keyed]
            if len(participants) < self.min_sites:
                rec.skipped = f"{len(participants)} sites hold keys, fewer than min_sites={self.min_sites}"
                return
        futs = {}
        for s in participants:
            secure = None
            if epoch is not None:
                co = epoch.coordinator
                secure = {"epoch": epoch.number, "participants": participants,
                          "inbox": None if s in co.delivered else dict(co.inboxes[s])}
            p = self.places[s]
            futs[s] = self._pinned(_site_round, p.data, p.template, self.vector, self.cfg, self.run_id, r, secure,
                                   site=s, what="round", round_no=r)
        t = time.perf_counter()
        results, failed = self._collect(futs, self.round_timeout)
        rec.timings["train"] = round(time.perf_counter() - t, 4)
        for s in list(results):
            why = self._malformed(results[s], masked=epoch is not None)
            if why:
                failed[s] = why
                del results[s]
        rec.dropped.update({s: f"train: {why}" for s, why in failed.items()})
        rec.site_metrics = {s: res["metrics"] for s, res in results.items()}
        if epoch is not None:
            epoch.coordinator.delivered.update(results)
        if len(results) < self.min_sites:
            rec.skipped = f"{len(results)} updates arrived, fewer than min_sites={self.min_sites}"
            return
        survivors = sorted(results, key=self.sites.index)
        if epoch is None:
            total = np.sum([results[s]["vector"] for s in survivors], axis=0)
        else:
            total = self._unmask(rec, epoch, participants, results, available)
            if total is None:
                return
        self._apply(rec, total, survivors)

    def _malformed(self, result: Any, *, masked: bool) -> str | None:
        """Why a site's answer cannot be aggregated, or None: a bad update is a dropped site."""
        if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
            return "malformed answer"
        v = result.get("vector")
        if not isinstance(v, np.ndarray) or v.shape != (len(self.vector) + 1,):
            return "malformed update (wrong shape)"
        if masked and v.dtype != np.uint64:
            return "malformed update (not a masked ring vector)"
        if not masked and (v.dtype.kind != "f" or not np.all(np.isfinite(v))):
            return "malformed update (not finite)"
        return None

    def _unmask(self, rec, epoch: _Epoch, participants, results, available) -> np.ndarray | None:
        co, r = epoch.coordinator, rec.round
        survivors = sorted(results, key=self.sites.index)
        gone = sorted(set(participants) - set(results), key=self.sites.index)
        # Share holders: the survivors and the keyed sites not sampled this round; not the
        # sites that just failed to answer (a cut link would only make us wait again).
        holders = [s for s in available if s in co.keyed and s not in gone]
        calls = {s: (self.run_id, s, epoch.number, r, survivors, gone,
                     None if s in co.delivered else dict(co.inboxes[s])) for s in holders}
        t = time.perf_counter()
        answers, failed = self._rpc(_site_unmask, calls, self.unmask_timeout)
        rec.timings["unmask"] = round(time.perf_counter() - t, 4)
        for s in answers:
            co.delivered.add(s)
        for s, why in failed.items():
            rec.dropped.setdefault(s, f"unmask: {why}")
        try:
            t = time.perf_counter()
            ring = co.unmask(r, {s: results[s]["vector"] for s in survivors}, participants, answers.values())
            rec.timings["unmask_sum"] = round(time.perf_counter() - t, 4)
        except SecAggError as e:
            rec.skipped = f"secure aggregation could not unmask the sum ({e})"
            return None
        return dequantize(ring)

    def _apply(self, rec: RoundRecord, total: np.ndarray, survivors: list[str]) -> None:
        """Average the summed updates into the global model, unless the sum is not what it must be."""
        count = float(total[-1])
        expected = float(len(survivors)) if self.dp else float(sum(self.places[s].samples for s in survivors))
        if not np.all(np.isfinite(total)) or abs(count - expected) > 1e-3:
            rec.skipped = (f"the aggregate is corrupt (count {count:g}, expected {expected:g}); "
                           "the global model was not updated")
            return
        summed = total[:-1]
        if self.dp:
            noisy = summed + self.noise_rng.normal(0.0, self.dp.sigma, size=summed.shape)
            # A fixed denominator (the expected number of sites) keeps the count out of the release.
            step = noisy / max(self.fraction * len(self.sites), 1.0)
        else:
            step = summed / count
        new = self.vector + step
        if not np.all(np.isfinite(new)):
            rec.skipped = "the averaged update is not finite; the global model was not updated"
            return
        self.vector = new
        set_vector(self.model, new)
        rec.aggregated = survivors

    def evaluate(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        X, y = self.eval_data
        return _metrics(self.model, X, y, self.cfg["kind"])

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> FederatedResult:
        import dask
        from tqdm.auto import tqdm

        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        bar = None
        try:
            with dask.annotate(job=f"federated-{self.name}"):
                self.load()
                bar = tqdm(total=self.rounds, desc=f"federated {self.name}", unit="round", disable=not self.progress)
                for r in range(1, self.rounds + 1):
                    rec = self.round(r)
                    self.history.append(rec)
                    post = {"sites": f"{len(rec.aggregated)}/{len(self.sites)}"}
                    if "accuracy" in rec.global_metrics:
                        post["acc"] = f"{rec.global_metrics['accuracy']:.3f}"
                    elif "loss" in rec.global_metrics:
                        post["loss"] = f"{rec.global_metrics['loss']:.4f}"
                    if rec.epsilon is not None:
                        post["ε"] = f"{rec.epsilon:.2f}"
                    if rec.dropped:
                        post["dropped"] = ",".join(rec.dropped)
                    if rec.skipped:
                        post["skipped"] = "yes"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                    if self.on_round is not None:
                        self.on_round(rec)
        except KeyboardInterrupt:
            job = f"federated-{self.name}"
            raise stop_job(self.client, job, job=job) from None
        finally:
            if bar is not None:
                bar.close()
            self.cleanup()
        return self.result(started, time.perf_counter() - t0)

    def cleanup(self) -> None:
        try:
            # Sites drop this run's keys; a site that is cut off forgets them when its worker goes.
            live = [s for s in self.places if not self.stuck.get(s)]
            self._rpc(_site_forget, {s: (self.run_id,) for s in live}, 5.0)
        except Exception:
            pass
        for futs in self.stuck.values():
            for f in futs:
                f.release()
        for p in self.places.values():
            for f in (p.data, p.template):
                if f is not None:
                    f.release()

    def result(self, started: datetime, seconds: float) -> FederatedResult:
        dp = None
        if self.dp is not None:
            dp = {**self.dp.to_dict(), "epsilon": self.accountant.epsilon(self.dp.delta), "mode": "central",
                  "level": "site", "accountant": "rdp", "sample_rate": self.fraction if self.poisson else 1.0,
                  "sampling": "poisson" if self.poisson else "all sites"}
        lineage = {
            "run": self.name,
            "run_id": self.run_id,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "strategy": self.strategy,
            "mu": self.cfg["mu"] if self.strategy == "fedprox" else None,
            "secure": self.secure,
            "dp": dp,
            "rounds": {"requested": self.rounds,
                       "completed": sum(1 for r in self.history if r.skipped is None),
                       "skipped": [r.round for r in self.history if r.skipped]},
            "training": {k: self.cfg[k] for k in ("local_epochs", "lr", "batch_size", "optimizer", "momentum",
                                                  "kind", "seed")},
            "model": {"class": type(self.model).__name__,
                      "parameters": int(sum(p.numel() for p in self.model.parameters()))},
            # Counts and where the data stayed, never a value of it.
            "sites": [{"site": p.site, "worker": p.worker, "samples": p.samples, "features": p.features,
                       "data_key": p.data.key, "rounds": p.rounds, "dropped_in": p.dropped_in}
                      for p in self.places.values()],
            "load_failures": dict(self.load_failures),
        }
        return FederatedResult(self.model, self.history, self.rounds, self.strategy, self.secure, dp,
                               list(self.sites), lineage, self.name, round(seconds, 3))


def federate(
    model: nn.Module,
    *,
    loader: Callable[[str], tuple[Any, Any]],
    sites: Sequence[str] | str,
    rounds: int = 10,
    local_epochs: int = 1,
    strategy: str = "fedavg",
    mu: float = 0.01,
    lr: float = 0.1,
    batch_size: int = 32,
    fraction: float = 1.0,
    min_sites: int = 2,
    secure: bool = True,
    dp: DPConfig | dict | bool | None = None,
    eval_data: tuple[Any, Any] | None = None,
    progress: bool = True,
    client,
    seed: int = 0,
    round_timeout: float = 60,
    load_timeout: float | None = None,
    name: str | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    loss: str = "auto",
    on_round: Callable[[RoundRecord], Any] | None = None,
) -> FederatedResult:
    """Train ``model`` across ``sites`` without their data leaving them; returns a :class:`FederatedResult`.

    ``loader(site)`` runs on the site's own worker and returns ``(X, y)``. Each round the
    sampled sites train ``local_epochs`` (SGD with ``lr``, ``momentum``, ``batch_size``; or
    Adam) from the global weights and send back only their update; ``strategy="fedprox"``
    adds the proximal term with ``mu``. With ``secure=True`` the coordinator sees only
    masked updates and their sum; with ``dp`` it adds calibrated noise and reports ε.
    ``eval_data=(X, y)`` held here gives a global metric after every round. ``loss`` is
    chosen from the model's output (one logit: binary; several: multiclass) unless named.
    ``on_round(record)`` is called after each round. Loading waits ``load_timeout``
    seconds (default: ``round_timeout``, at least 120: a site's first task imports
    PyTorch). The input ``model`` is not changed: ``result.model`` holds the trained
    global model. ``client`` is the ``distributed.Client`` of the cluster to run on.
    """
    sites = _check_args(model, loader, sites, rounds, local_epochs, strategy, mu, lr, batch_size, fraction,
                        min_sites, secure, round_timeout, optimizer, loss)
    dp_cfg = _as_dp(dp)
    name = name or f"run-{uuid.uuid4().hex[:6]}"
    if eval_data is not None:
        try:
            X, y = eval_data
            eval_data = (torch.as_tensor(np.asarray(X), dtype=torch.float32), torch.as_tensor(np.asarray(y)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"eval_data must be (X, y) arrays: {e}") from None
    run = _Run(client, model, loader=loader, sites=sites, rounds=rounds, local_epochs=local_epochs,
               strategy=strategy, mu=mu, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
               fraction=fraction, min_sites=min_sites, secure=bool(secure), dp=dp_cfg, eval_data=eval_data,
               progress=progress, seed=seed, round_timeout=round_timeout,
               load_timeout=load_timeout, name=name, loss=loss, on_round=on_round)
    return run.run()
