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

from lepton_lab.ml.federated.coordinator import federate
from lepton_lab.ml.federated.faults import clear_faults, inject_fault
from lepton_lab.ml.federated.local import get_vector, set_vector
from lepton_lab.ml.federated.options import EPOCH_ROUNDS as EPOCH_ROUNDS
from lepton_lab.ml.federated.options import LOAD_TIMEOUT as LOAD_TIMEOUT
from lepton_lab.ml.federated.options import LOSSES as LOSSES
from lepton_lab.ml.federated.options import OPTIMIZERS as OPTIMIZERS
from lepton_lab.ml.federated.options import PHASES as PHASES
from lepton_lab.ml.federated.options import STALE_AFTER as STALE_AFTER
from lepton_lab.ml.federated.options import STRATEGIES as STRATEGIES
from lepton_lab.ml.federated.options import FederatedError
from lepton_lab.ml.federated.result import FederatedResult, RoundRecord
from lepton_lab.ml.federated.site import SiteData as SiteData
from lepton_lab.ml.federated.strategy import FedAvg as FedAvg
from lepton_lab.ml.federated.strategy import FedProx as FedProx
from lepton_lab.ml.privacy import DPConfig

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
