"""FedAvg and FedProx as strategies in Flower's manner: which sites train a round, and how updates combine.

Pure: sampling (``configure_fit``) and aggregation (``aggregate_fit``) are functions of the
sites and their answers; reaching the sites, timeouts and secure aggregation live in the
coordinator. The proximal term of FedProx is added on the sites (:mod:`.local`).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from lepton_lab.ml.privacy import DPConfig


class FedAvg:
    """Sample ``fraction`` of the available sites (seeded, at least ``min_sites``) and average their updates.

    Updates arrive summed as ``[sum n_i * update_i, sum n_i]`` and are divided by the
    summed count. With ``dp``, sites send clipped updates with a count of 1, sites are
    Poisson-sampled when ``fraction < 1``, and the sum gets Gaussian noise and a fixed
    denominator (the expected number of sites) so the count stays out of the release.
    """

    name = "fedavg"

    def __init__(self, sites: list[str], *, fraction: float, min_sites: int, seed: int,
                 dp: DPConfig | None = None):
        self.sites, self.fraction, self.min_sites, self.dp = sites, float(fraction), min_sites, dp
        self.rng = np.random.default_rng(seed)
        # DP noise comes from the OS: a known seed must not let anyone subtract it.
        self.noise_rng = np.random.default_rng(secrets.randbits(128))
        self.poisson = dp is not None and self.fraction < 1

    def configure_fit(self, available: list[str]) -> list[str]:
        """The sites that train this round, in the order of ``sites``."""
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

    def check_update(self, result: Any, size: int, *, masked: bool) -> str | None:
        """Why a site's answer cannot be aggregated, or None: a bad update is a dropped site."""
        if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
            return "malformed answer"
        v = result.get("vector")
        if not isinstance(v, np.ndarray) or v.shape != (size + 1,):
            return "malformed update (wrong shape)"
        if masked and v.dtype != np.uint64:
            return "malformed update (not a masked ring vector)"
        if not masked and (v.dtype.kind != "f" or not np.all(np.isfinite(v))):
            return "malformed update (not finite)"
        return None

    def aggregate_fit(self, vector: np.ndarray, total: np.ndarray,
                      samples: list[int]) -> tuple[np.ndarray | None, str | None]:
        """The new global vector from the summed updates of sites with ``samples`` examples each,
        or None and why the global model must keep its weights."""
        count = float(total[-1])
        expected = float(len(samples)) if self.dp else float(sum(samples))
        if not np.all(np.isfinite(total)) or abs(count - expected) > 1e-3:
            return None, (f"the aggregate is corrupt (count {count:g}, expected {expected:g}); "
                          "the global model was not updated")
        summed = total[:-1]
        if self.dp:
            noisy = summed + self.noise_rng.normal(0.0, self.dp.sigma, size=summed.shape)
            step = noisy / max(self.fraction * len(self.sites), 1.0)
        else:
            step = summed / count
        new = vector + step
        if not np.all(np.isfinite(new)):
            return None, "the averaged update is not finite; the global model was not updated"
        return new, None


class FedProx(FedAvg):
    """FedAvg whose sites add ``mu/2 * ||w - w_global||^2`` to their local loss."""

    name = "fedprox"

    def __init__(self, sites: list[str], *, mu: float, **kwargs):
        super().__init__(sites, **kwargs)
        self.mu = float(mu)


def make_strategy(name: str, sites: list[str], *, mu: float, fraction: float, min_sites: int, seed: int,
                  dp: DPConfig | None) -> FedAvg:
    """The strategy called ``name`` (one of :data:`~.options.STRATEGIES`)."""
    if name == "fedprox":
        return FedProx(sites, mu=mu, fraction=fraction, min_sites=min_sites, seed=seed, dp=dp)
    return FedAvg(sites, fraction=fraction, min_sites=min_sites, seed=seed, dp=dp)
