"""The site's side of a federated run: the tasks and calls that run inside a site's worker process.

A site's data, its raw update, its private keys and its seeds live only here.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lepton_lab.errors import ConfigError
from lepton_lab.ml.federated.faults import _afault, _fault
from lepton_lab.ml.federated.local import _metrics, _train_local, get_vector, set_vector
from lepton_lab.ml.privacy import clip_update
from lepton_lab.ml.secagg import Roster, SecAggError, SiteSecAgg, quantize


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


def _site_state(run_id: str, site: str) -> dict[str, Any]:
    with _state_lock:
        return _STATE.setdefault((run_id, site), {"epochs": {}})


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


async def _site_keys(run_id: str, site: str, epoch: int, context: bytes) -> tuple[bytes, bytes]:
    """A call on the worker's event loop (two X25519 key pairs: microseconds)."""
    await _afault(site, "keys", epoch)
    state = _site_state(run_id, site)
    agent = SiteSecAgg(site, context)
    state["epochs"] = {epoch: agent}  # older epochs' keys are dropped: they are burned or done
    return agent.advertise()


def _site_share(run_id: str, site: str, epoch: int, roster: Roster):
    """A call in a thread: splitting and sealing the epoch's secrets grows with sites x rounds."""
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


async def _site_unmask(run_id: str, site: str, epoch: int, round_no: int, survivors: list[str],
                       dropped: list[str], inbox: dict | None):
    """A call on the worker's event loop: it looks up the shares it holds (tens of microseconds),
    and decrypts its inbox only if the round's task did not take it."""
    await _afault(site, "unmask", round_no)
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
