"""Differential privacy for federated runs: site-level clipping, Gaussian noise, an RDP accountant.

The guarantee is **central DP at the site level** (DP-FedAvg, McMahan et al. 2018): two
runs that differ by one site's entire data are hard to tell apart from the sequence of
global models. Each site clips its model update to L2 norm ``clip`` on the site; the
coordinator adds Gaussian noise with standard deviation ``noise_multiplier * clip`` to the
*sum* of the clipped updates (after secure aggregation, so no single update is seen) and
divides by the expected number of sites, a fixed denominator that leaks nothing.

The accountant is the Rényi-DP accountant of the sampled Gaussian mechanism (Mironov,
Talwar and Zhang 2019) at integer orders, with Poisson sampling of sites at rate ``q``
(``q = 1`` when every site takes part in every round: plain composition of Gaussian
mechanisms), converted to (ε, δ) with the bound of Canonne, Kamath and Steinke (2020) that
Opacus and TF Privacy use. Integer orders only make ε a valid, slightly loose upper bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from lepton_lab.errors import ConfigError

__all__ = ["DPConfig", "RDPAccountant", "clip_update", "epsilon", "rdp_sampled_gaussian"]

#: Rényi orders the accountant evaluates (integers: the closed form below is exact there).
ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 192, 256, 512, 1024)


@dataclass(frozen=True)
class DPConfig:
    """Site-level differential privacy: clip each site's update to ``clip``, add noise ``noise_multiplier * clip``.

    ``delta`` is the δ for which ε is reported (keep it below 1 / number of sites).
    """

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self):
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"DPConfig.clip must be a positive number, got {self.clip!r}")
        if not (isinstance(self.noise_multiplier, (int, float)) and self.noise_multiplier > 0
                and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"DPConfig.noise_multiplier must be a positive number, got {self.noise_multiplier!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ConfigError(f"DPConfig.delta must be between 0 and 1, got {self.delta!r}")

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise added to the sum of clipped updates."""
        return self.noise_multiplier * self.clip

    def to_dict(self) -> dict:
        return asdict(self)


def clip_update(update: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``update`` scaled down to L2 norm at most ``clip``; also its norm before clipping."""
    norm = float(np.linalg.norm(update))
    if norm > clip:
        return update * (clip / norm), norm
    return update, norm


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: int) -> float:
    """RDP at integer ``order`` of one step of the Poisson-sampled Gaussian mechanism.

    ``log A_α = log Σ_k C(α, k) (1-q)^(α-k) q^k exp((k² - k) / (2σ²))``, RDP = log A_α / (α - 1).
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be in [0, 1]")
    if q == 0:
        return 0.0
    sigma2 = noise_multiplier**2
    if q == 1:
        return order / (2 * sigma2)
    log_a = -math.inf
    for k in range(order + 1):
        term = (math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
                + k * math.log(q) + (order - k) * math.log1p(-q) + (k * k - k) / (2 * sigma2))
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


def epsilon(rdp: Sequence[float] | np.ndarray, orders: Sequence[int], delta: float) -> tuple[float, int]:
    """(ε, best order) for ``delta`` from RDP values at ``orders`` (Canonne-Kamath-Steinke conversion)."""
    best, best_order = math.inf, orders[0]
    for r, a in zip(rdp, orders):
        eps = r + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        if eps < best:
            best, best_order = eps, a
    return max(best, 0.0), best_order


class RDPAccountant:
    """Adds up the privacy cost of rounds; ``.epsilon(delta)`` is the ε spent so far."""

    def __init__(self, orders: Sequence[int] = ORDERS):
        self.orders = tuple(orders)
        self.rdp = np.zeros(len(self.orders))
        self.steps = 0
        self._cache: dict[tuple[float, float], np.ndarray] = {}

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        key = (float(noise_multiplier), float(sample_rate))
        if key not in self._cache:
            self._cache[key] = np.array([rdp_sampled_gaussian(sample_rate, noise_multiplier, a)
                                         for a in self.orders])
        self.rdp = self.rdp + steps * self._cache[key]
        self.steps += steps

    def epsilon(self, delta: float) -> float:
        if self.steps == 0:
            return 0.0
        return epsilon(self.rdp, self.orders, delta)[0]
