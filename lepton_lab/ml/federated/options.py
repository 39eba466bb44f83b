"""What a federated run may be asked: strategies, losses, optimizers and limits, and ``federate``'s argument checks."""

from __future__ import annotations

import math

from torch import nn

from lepton_lab.errors import ConfigError, LeptonError
from lepton_lab.ml.privacy import DPConfig

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
#: Share holders asked to unmask beyond the threshold of shares a seed needs: one answer
#: may fail or be bad without a second trip to the others.
UNMASK_SPARE = 1
#: Phases of a round, as history and :func:`inject_fault` name them.
PHASES = ("load", "keys", "share", "train", "unmask")


class FederatedError(LeptonError):
    """A federated run cannot start or go on (too few sites, a loader that fails everywhere)."""

    status = 409

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
