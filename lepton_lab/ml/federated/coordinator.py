"""The coordinator of a federated run: rounds over Dask in the analyst's process.

It brings the sites' data up where it lives, picks the sites that can take part, runs
each round's phases (secure-aggregation keys, local training, unmasking) within their
deadlines, and hands the answers to the strategy (:mod:`.strategy`) to combine.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from lepton_lab.cluster.interrupt import stop_job
from lepton_lab.cluster.workers import on_site, workers_now
from lepton_lab.errors import ConfigError
from lepton_lab.ml.federated.calls import collect, rpc, short
from lepton_lab.ml.federated.local import _metrics, get_vector, set_vector
from lepton_lab.ml.federated.options import LOAD_TIMEOUT, STALE_AFTER, UNMASK_SPARE, FederatedError, _as_dp, _check_args
from lepton_lab.ml.federated.result import FederatedResult, RoundRecord
from lepton_lab.ml.federated.secure import _Epoch, need_rekey, open_epoch
from lepton_lab.ml.federated.site import _site_describe, _site_forget, _site_load, _site_round, _site_unmask
from lepton_lab.ml.federated.strategy import make_strategy
from lepton_lab.ml.privacy import DPConfig, RDPAccountant
from lepton_lab.ml.secagg import SecAggError, dequantize

logger = logging.getLogger(__package__)


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
        self.fit = make_strategy(strategy, sites, mu=mu, fraction=fraction, min_sites=min_sites, seed=seed, dp=dp)
        self.round_timeout = float(round_timeout)
        self.load_timeout = max(self.round_timeout, LOAD_TIMEOUT) if load_timeout is None else float(load_timeout)
        self.unmask_timeout = min(self.round_timeout, max(5.0, self.round_timeout / 4))
        self.name = name
        self.run_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.progress, self.on_round = progress, on_round
        self.accountant = RDPAccountant() if dp else None
        self.poisson = self.fit.poisson
        self.cfg = {"local_epochs": local_epochs, "lr": float(lr), "batch_size": batch_size, "optimizer": optimizer,
                    "momentum": float(momentum), "strategy": strategy, "mu": float(mu), "seed": int(seed),
                    "clip": dp.clip if dp else None, "kind": loss,
                    "site_index": {s: i for i, s in enumerate(sites)}}
        self.eval_data = eval_data
        self.places: dict[str, _Placement] = {}
        self.stuck: dict[str, list[Any]] = {s: [] for s in sites}
        # The last round's tasks, released only with the next round's (see ``_submit_round``).
        self.last_round: list[Any] = []
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
        """Results within ``timeout`` and {site: reason} for the rest; a hung site's future is kept as stuck."""
        return collect(self.client, futures, timeout, self.stuck)

    def _rpc(self, fn, args: dict[str, tuple], timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
        """Call ``fn(*args[site])`` on each site's worker directly, each bounded by ``timeout``."""
        return rpc(self.client, fn, {site: (self.places[site].address, call) for site, call in args.items()}, timeout)

    # -- bringing the sites' data up --------------------------------------------------

    def load(self) -> None:
        from distributed import wait

        missing = list(self.sites)
        for attempt in range(3):  # a site's worker between a restart and joining again: look again
            if attempt:
                time.sleep(0.5 * attempt)
            known = sorted({r for w in workers_now(self.client).values() for r, n in (w.get("resources") or {}).items()
                            if n > 0 and r not in ("cloud", "edge", "GPU")})
            missing = [s for s in missing if s not in known]
            if not missing:
                break
        if missing:
            raise FederatedError(f"no worker of site {', '.join(missing)} in this cluster "
                                 f"(sites with workers: {', '.join(known) or 'none'}); check the names or "
                                 "join a machine with `lepton-lab worker --site NAME`")
        data = {s: self.client.submit(_site_load, self.loader, s, key=self._key("data", s), resources=on_site(s),
                                      pure=False) for s in self.sites}
        described = {s: self.client.submit(_site_describe, f, key=self._key("describe", s), resources=on_site(s),
                                           pure=False) for s, f in data.items()}
        info, failed = self._collect(described, self.load_timeout)
        for site in list(failed):
            f = data[site]
            if f.status == "error":
                failed[site] = "loader failed: " + short(f.exception(timeout=5))
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
        workers = workers_now(self.client)
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

    # -- secure aggregation key epochs ---------------------------------------------------

    def rekey(self, round_no: int, available: list[str], dropped: dict[str, str]) -> None:
        """A new epoch: every available site makes keys and shares its secrets with the others."""
        self.epoch = None
        self.epochs += 1
        self.epoch = open_epoch(self._rpc, run_id=self.run_id, number=self.epochs, available=available,
                                sites=self.sites, round_no=round_no, rounds=self.rounds, min_sites=self.min_sites,
                                timeout=self.round_timeout, dropped=dropped)

    # -- one round -------------------------------------------------------------------------

    def round(self, round_no: int) -> RoundRecord:
        t0 = time.perf_counter()
        available = self.available()
        unavailable = [s for s in self.sites if s not in available]
        sampled = self.fit.configure_fit(available)
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
            if need_rekey(self.epoch, r, sampled):
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
        futs = self._submit_round(r, participants, epoch)
        t = time.perf_counter()
        results, failed = self._collect(futs, self.round_timeout)
        rec.timings["train"] = round(time.perf_counter() - t, 4)
        for s in list(results):
            why = self.fit.check_update(results[s], len(self.vector), masked=epoch is not None)
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

    def _submit_round(self, r: int, participants: list[str], epoch: _Epoch | None) -> dict[str, Any]:
        """Each participant's training task, then the release of the last round's.

        A client sends to its scheduler in batches at most every 10 ms. Released at the end of
        their round, the last round's tasks went out in a batch of their own just before this
        round's availability check, and this round's tasks then waited out the rest of those
        10 ms; released after them, they leave in the same batch.
        """
        futs = {}
        for s in participants:
            secure = None
            if epoch is not None:
                co = epoch.coordinator
                secure = {"epoch": epoch.number, "participants": participants, "inbox": co.inbox(s)}
            p = self.places[s]
            futs[s] = self._pinned(_site_round, p.data, p.template, self.vector, self.cfg, self.run_id, r, secure,
                                   site=s, what="round", round_no=r)
        last, self.last_round = self.last_round, list(futs.values())
        for f in last:
            if f.done():  # one not done is a hung site's, kept in ``stuck`` until it ends
                f.release()
        return futs

    def _unmask(self, rec, epoch: _Epoch, participants, results, available) -> np.ndarray | None:
        co, r = epoch.coordinator, rec.round
        survivors = sorted(results, key=self.sites.index)
        gone = sorted(set(participants) - set(results), key=self.sites.index)
        # Share holders: the survivors and the keyed sites not sampled this round; not the
        # sites that just failed to answer (a cut link would only make us wait again).
        holders = [s for s in available if s in co.keyed and s not in gone]
        # Any `threshold` holders' shares rebuild every seed and key: that many are asked,
        # and UNMASK_SPARE more, in an order that turns with the rounds; the others only
        # when those answers do not rebuild the sum (a holder failed, or a share was bad).
        k = co.roster.threshold + UNMASK_SPARE
        turn = holders[r % len(holders):] + holders[:r % len(holders)] if holders else []
        masked = {s: results[s]["vector"] for s in survivors}
        answers: dict[str, Any] = {}
        rec.timings["unmask"] = rec.timings["unmask_sum"] = 0.0
        for batch in (turn[:k], turn[k:]):
            if not batch and answers:
                break
            calls = {s: (self.run_id, s, epoch.number, r, survivors, gone, co.inbox(s)) for s in batch}
            t = time.perf_counter()
            got, failed = self._rpc(_site_unmask, calls, self.unmask_timeout)
            rec.timings["unmask"] = round(rec.timings["unmask"] + time.perf_counter() - t, 4)
            answers.update(got)
            co.delivered.update(got)
            for s, why in failed.items():
                rec.dropped.setdefault(s, f"unmask: {why}")
            try:
                t = time.perf_counter()
                ring = co.unmask(r, masked, participants, answers.values())
                rec.timings["unmask_sum"] = round(rec.timings["unmask_sum"] + time.perf_counter() - t, 4)
                return dequantize(ring)
            except SecAggError as e:
                error = e
        rec.skipped = f"secure aggregation could not unmask the sum ({error})"
        return None

    def _apply(self, rec: RoundRecord, total: np.ndarray, survivors: list[str]) -> None:
        """Average the summed updates into the global model, unless the sum is not what it must be."""
        new, skipped = self.fit.aggregate_fit(self.vector, total, [self.places[s].samples for s in survivors])
        if new is None:
            rec.skipped = skipped
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
        for futs in [*self.stuck.values(), self.last_round]:
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
