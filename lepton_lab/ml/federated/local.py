"""A model as one weight vector, and the local epochs a site trains (FedProx's proximal term included)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lepton_lab.errors import ConfigError


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
