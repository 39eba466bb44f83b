"""The GPU ledger: which cluster and site holds each physical GPU of this machine.

Every cluster the control plane starts takes its GPUs here and gives them back
when a worker is scaled away or the cluster stops, so no two clusters (and no
two sites of one cluster) are ever given the same device, and quotas count the
devices really held. A device is known by its UUID (a MIG instance by its own),
however ``CUDA_VISIBLE_DEVICES`` spells it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable

from ..errors import ClusterError
from .gpus import GPU
from .profiles import SiteSpec
from .workers import gpu_count_for


@dataclass(frozen=True)
class Holding:
    """Who holds one device: a cluster (id, name, team) and one of its sites."""

    cluster_id: str
    cluster: str
    team: str
    site: str


class GPULedger:
    """Devices held, by device key; every change is made under one lock."""

    def __init__(self) -> None:
        self._held: dict[str, Holding] = {}
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------------

    def holder(self, gpu: GPU) -> Holding | None:
        with self._lock:
            return self._held.get(gpu.key)

    def free(self, devices: Iterable[GPU]) -> list[GPU]:
        """The devices of ``devices`` nobody holds, in their order."""
        with self._lock:
            return [d for d in devices if d.key not in self._held]

    def held_by(self, cluster_id: str, site: str | None = None) -> list[str]:
        """Keys of the devices a cluster (one of its sites) holds."""
        with self._lock:
            return [k for k, h in self._held.items()
                    if h.cluster_id == cluster_id and (site is None or h.site == site)]

    # -- changing ---------------------------------------------------------------------------

    def reserve(self, cluster_id: str, cluster: str, team: str, sites: Iterable[SiteSpec],
                devices: list[GPU]) -> dict[str, list[GPU]]:
        """Give each GPU site of a new cluster devices of its own, all or nothing.

        ``gpus: auto`` takes every free device (none free: the site runs CPU
        workers); a number takes that many or fails with a one-line error saying
        how many are free and which clusters of ``team`` hold the others.
        """
        with self._lock:
            free = [d for d in devices if d.key not in self._held]
            grants: dict[str, list[GPU]] = {}
            for site in sites:
                if not site.gpus:
                    continue
                gpu_count_for(site, devices)  # the machine itself has too few: NoGPUError
                want = len(free) if site.gpus == "auto" else int(site.gpus)
                if want > len(free):
                    raise ClusterError(self._busy(cluster, team, site.name, want, devices, len(free)))
                grants[site.name], free = free[:want], free[want:]
            for site_name, gpus in grants.items():
                for g in gpus:
                    self._held[g.key] = Holding(cluster_id, cluster, team, site_name)
            return grants

    def take(self, cluster_id: str, cluster: str, team: str, site: str, want: int | None,
             devices: list[GPU], *, at_most: int | None = None) -> list[GPU]:
        """``want`` more free devices for one site.

        ``want=None`` takes as many as are free, up to ``at_most`` (maybe none).
        """
        with self._lock:
            free = [d for d in devices if d.key not in self._held]
            if want is None:
                want = len(free) if at_most is None else min(len(free), at_most)
            if want > len(free):
                raise ClusterError(self._busy(cluster, team, site, want, devices, len(free)))
            got = free[:want]
            for g in got:
                self._held[g.key] = Holding(cluster_id, cluster, team, site)
            return got

    def release(self, cluster_id: str, keys: Iterable[str] | None = None) -> int:
        """Give back ``keys`` (every device of the cluster when None); returns how many."""
        with self._lock:
            mine = [k for k, h in self._held.items() if h.cluster_id == cluster_id]
            chosen = mine if keys is None else [k for k in keys if k in mine]
            for k in chosen:
                del self._held[k]
            return len(chosen)

    # -- messages ---------------------------------------------------------------------------

    def _busy(self, cluster: str, team: str, site: str, want: int, devices: list[GPU], free: int) -> str:
        """One line: what was asked, how many are free, who holds the rest (other teams unnamed)."""
        keys = {d.key for d in devices}
        mine: dict[str, int] = {}
        others = 0
        for k, h in self._held.items():
            if k not in keys:
                continue
            if h.team == team:
                mine[h.cluster] = mine.get(h.cluster, 0) + 1
            else:
                others += 1
        held = [f"{n} by cluster {name}" for name, n in sorted(mine.items())]
        if others:
            held.append(f"{others} by other teams")
        return (f"cluster {cluster}: site {site} asks for {want} GPU{'s' if want != 1 else ''} but "
                f"{free} of {len(devices)} {'is' if free == 1 else 'are'} free"
                + (f" (held: {', '.join(held)})" if held else "")
                + (f"; ask for --gpus {free} or" if free else ";") + " stop a cluster that holds some")


#: The ledger of this process: every cluster manager in it shares the machine's GPUs.
LEDGER = GPULedger()
