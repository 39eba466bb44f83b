"""Secure aggregation: the coordinator learns the sum of the sites' updates, nothing else.

The protocol is SecAgg (Bonawitz et al., CCS 2017) with double masking and
dropout recovery, the one Flower's SecAgg+ implements (on a complete graph):

1. **Keys.** Each site makes two X25519 key pairs: ``c`` for the pairwise
   channels that carry secret shares, ``s`` for the pairwise masks, and
   publishes the public halves (:meth:`SiteSecAgg.advertise`).
2. **Shares.** Each site Shamir-shares (t of n, over the prime field
   ``2**521 - 1``) its ``s`` private key and one fresh self-mask seed ``b`` per
   round of the key epoch, and sends each peer its shares encrypted with
   AES-GCM under ``HKDF(X25519(c_i, c_j))``. The coordinator only routes the
   ciphertexts (:meth:`SiteSecAgg.share`). It also receives a SHA-256
   commitment to every ``b`` so that a reconstruction it cannot trust is caught.
3. **Masked input.** A site turns its update into fixed-point integers mod
   ``2**64`` and adds ``PRG(b_i)`` plus, for each other participant ``j``,
   ``+PRG(s_ij)`` if ``j`` comes after it and ``-PRG(s_ij)`` otherwise
   (:meth:`SiteSecAgg.mask`). The pairwise masks cancel in the sum; each
   masked vector on its own is uniform in the ring.
4. **Unmask.** For every participant whose masked input arrived, surviving
   sites reveal their share of its ``b``; for every participant that vanished
   after the shares went out, their share of its ``s`` key, from which the
   coordinator recomputes the masks it left in the others' inputs
   (:meth:`SiteSecAgg.unmask`, :meth:`SecAggCoordinator.unmask`). An honest
   site never reveals both kinds of share for one peer.

The PRG is AES-256-CTR keyed by HKDF output: a real stream cipher, not
numpy's Mersenne Twister. Keys live for an *epoch* of rounds; masks of round
``r`` are derived with ``r`` in the HKDF info. Once a site's ``s`` key has been
reconstructed its keys are burned and the caller starts a new epoch.

The classes here are transport-free: :mod:`lepton_lab.ml.federated` carries
their messages over Dask, the tests call them in one process.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lepton_lab.errors import IntegrityError, LeptonError

__all__ = [
    "FRAC_BITS",
    "PRIME",
    "SecAggCoordinator",
    "SecAggError",
    "SiteSecAgg",
    "dequantize",
    "prg",
    "quantize",
    "shamir_combine",
    "shamir_split",
    "threshold_for",
]

#: Shamir shares live in GF(2**521 - 1), a Mersenne prime above every 256-bit secret.
PRIME = 2**521 - 1
#: Fixed point: updates are scaled by 2**FRAC_BITS and rounded before masking (mod 2**64).
FRAC_BITS = 24
#: Largest magnitude a fixed-point value (and the sum of all of them) may reach.
_RING_LIMIT = 2**62


class SecAggError(LeptonError):
    """A secure-aggregation round cannot finish (too few sites, a bad share, an overflow)."""

    status = 409


def threshold_for(n: int) -> int:
    """Shares needed to reconstruct a secret among ``n`` sites: a strict majority, at least 2."""
    return max(2, n // 2 + 1)


# -- fixed point ------------------------------------------------------------------------------


def quantize(values: np.ndarray, *, parties: int = 1) -> np.ndarray:
    """Floats to fixed-point integers in the ring Z/2**64 (two's complement), as ``uint64``.

    ``parties`` is how many such vectors will be added up: the sum must stay
    clear of the ring's wrap-around, so an update too large for it is refused.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise SecAggError("the update holds NaN or infinity; lower the learning rate")
    scaled = np.rint(v * float(2**FRAC_BITS))
    if scaled.size and np.max(np.abs(scaled)) * max(parties, 1) >= _RING_LIMIT:
        raise SecAggError(
            f"an update value of {np.max(np.abs(v)):.3g} does not fit the fixed-point ring with "
            f"{parties} sites; lower the learning rate or clip the updates"
        )
    return scaled.astype(np.int64).view(np.uint64)


def dequantize(ring: np.ndarray) -> np.ndarray:
    """A sum in the ring back to floats (the inverse of :func:`quantize`, summed)."""
    signed = np.asarray(ring, dtype=np.uint64).view(np.int64)
    return signed.astype(np.float64) / float(2**FRAC_BITS)


# -- primitives -------------------------------------------------------------------------------


def _hkdf(secret: bytes, info: bytes, salt: bytes = b"lepton-secagg") -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def prg(seed: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random ``uint64`` from a 32-byte seed: the AES-256-CTR keystream."""
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    stream = encryptor.update(b"\x00" * (8 * n)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=True)


def shamir_split(secret: int, n: int, t: int) -> list[tuple[int, int]]:
    """``n`` shares ``(x, y)`` of ``secret`` (< PRIME), any ``t`` of which rebuild it."""
    if not 0 <= secret < PRIME:
        raise ValueError("secret out of the field")
    if not 1 <= t <= n:
        raise ValueError(f"threshold {t} must be between 1 and {n}")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def shamir_combine(shares: Iterable[tuple[int, int]]) -> int:
    """The secret at x = 0 from shares ``(x, y)`` (Lagrange interpolation)."""
    pts = list(shares)
    xs = [x for x, _ in pts]
    if len(set(xs)) != len(xs):
        raise SecAggError("two shares carry the same index")
    secret = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def _pub(raw: bytes) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(raw)


def _commit(seed: bytes) -> str:
    return hashlib.sha256(b"lepton-secagg-b|" + seed).hexdigest()


def _mask_seed(shared: bytes, context: bytes, round_no: int) -> bytes:
    return _hkdf(shared, b"mask|" + context + b"|%d" % round_no)


def _self_seed(b: bytes, round_no: int) -> bytes:
    return _hkdf(b, b"self|%d" % round_no)


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roster:
    """Who holds keys in an epoch: site -> (Shamir index, channel public key, mask public key)."""

    context: bytes  # run and epoch, bound into every key derivation and AAD
    entries: Mapping[str, tuple[int, bytes, bytes]]
    threshold: int
    rounds: tuple[int, ...]

    def index(self, site: str) -> int:
        return self.entries[site][0]


@dataclass
class Unmasking:
    """What one site reveals for a round: shares of survivors' ``b`` and of dropped sites' keys."""

    site: str
    b_shares: dict[str, tuple[int, int]] = field(default_factory=dict)
    sk_shares: dict[str, tuple[int, int]] = field(default_factory=dict)


# -- the site's side --------------------------------------------------------------------------


class SiteSecAgg:
    """One site's part of an epoch. Its private keys and seeds never leave this object."""

    def __init__(self, site: str, context: bytes):
        self.site = site
        self.context = context
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self.roster: Roster | None = None
        self._b: dict[int, bytes] = {}  # round -> self-mask seed
        self._mask_keys: dict[str, bytes] = {}  # peer -> X25519 shared secret of the s keys
        self._own: dict = {}  # this site's shares of its own secrets
        self._inbox: dict[str, dict] = {}  # peer -> decrypted shares of that peer's secrets
        self._revealed: dict[tuple[int, str], str] = {}  # (round, peer) -> "b" | "sk"
        self._burned: set[str] = set()  # peers whose s key this site has helped rebuild
        self.masked_rounds: set[int] = set()

    def advertise(self) -> tuple[bytes, bytes]:
        """The public halves (channel key, mask key), raw 32 bytes each."""
        return self._c.public_key().public_bytes_raw(), self._s.public_key().public_bytes_raw()

    def _channel(self, peer: str) -> AESGCM:
        assert self.roster is not None
        shared = self._c.exchange(_pub(self.roster.entries[peer][1]))
        return AESGCM(_hkdf(shared, b"channel|" + self.context))

    def _aad(self, sender: str, receiver: str) -> bytes:
        return b"|".join([self.context, sender.encode(), receiver.encode()])

    def share(self, roster: Roster) -> tuple[dict[str, bytes], dict[int, str]]:
        """Shares of this site's mask key and round seeds, one ciphertext per peer, and seed commitments."""
        if self.site not in roster.entries:
            raise SecAggError(f"site {self.site} is not in the key roster")
        mine = roster.entries[self.site]
        if (mine[1], mine[2]) != self.advertise():
            raise IntegrityError(f"the roster holds keys for {self.site} that are not this site's")
        self.roster = roster
        n, t = len(roster.entries), roster.threshold
        self._b = {r: secrets.token_bytes(32) for r in roster.rounds}
        for peer, (_, _, s_pk) in roster.entries.items():
            if peer != self.site:
                self._mask_keys[peer] = self._s.exchange(_pub(s_pk))
        sk_shares = shamir_split(int.from_bytes(self._s.private_bytes_raw(), "big"), n, t)
        b_shares = {r: shamir_split(int.from_bytes(b, "big"), n, t) for r, b in self._b.items()}
        outbox: dict[str, bytes] = {}
        for peer, (idx, _, _) in roster.entries.items():
            payload = {"sk": sk_shares[idx - 1], "b": {str(r): s[idx - 1] for r, s in b_shares.items()}}
            if peer == self.site:
                self._own = payload
                continue
            nonce = secrets.token_bytes(12)
            blob = json.dumps(payload, separators=(",", ":")).encode()
            outbox[peer] = nonce + self._channel(peer).encrypt(nonce, blob, self._aad(self.site, peer))
        return outbox, {r: _commit(b) for r, b in self._b.items()}

    def receive(self, inbox: Mapping[str, bytes]) -> None:
        """Decrypt the shares the other sites sent this site (routed by the coordinator)."""
        if self.roster is None:
            raise SecAggError(f"site {self.site} has no roster yet")
        for sender, blob in inbox.items():
            if sender in self._inbox or sender == self.site:
                continue
            if sender not in self.roster.entries:
                raise IntegrityError(f"shares from {sender}, who is not in the key roster")
            try:
                plain = self._channel(sender).decrypt(blob[:12], blob[12:], self._aad(sender, self.site))
            except Exception:
                raise IntegrityError(f"the shares from {sender} do not decrypt; they were altered") from None
            self._inbox[sender] = json.loads(plain)

    def mask(self, update: np.ndarray, round_no: int, participants: Iterable[str]) -> np.ndarray:
        """The fixed-point update (``uint64``) with this round's self mask and pairwise masks added."""
        roster = self.roster
        if roster is None or round_no not in self._b:
            raise SecAggError(f"site {self.site} holds no keys for round {round_no}")
        others = [p for p in participants if p != self.site]
        unknown = [p for p in others if p not in roster.entries or p in self._burned]
        if unknown:
            raise SecAggError(f"cannot mask with {', '.join(unknown)}: no keys shared with them")
        y = np.asarray(update, dtype=np.uint64).copy()
        n, me = y.size, roster.index(self.site)
        with np.errstate(over="ignore"):
            y += prg(_self_seed(self._b[round_no], round_no), n)
            for peer in others:
                m = prg(_mask_seed(self._mask_keys[peer], self.context, round_no), n)
                if roster.index(peer) > me:
                    y += m
                else:
                    y -= m
        self.masked_rounds.add(round_no)
        return y

    def unmask(self, round_no: int, survivors: Iterable[str], dropped: Iterable[str]) -> Unmasking:
        """This site's shares for the round: ``b`` of each survivor, ``s`` key of each dropped site."""
        roster = self.roster
        if roster is None:
            raise SecAggError(f"site {self.site} has no roster")
        survivors, dropped = set(survivors), set(dropped)
        if survivors & dropped:
            raise SecAggError("a site cannot be both a survivor and dropped")
        if len(survivors) < roster.threshold:
            raise SecAggError(f"only {len(survivors)} survivors; at least {roster.threshold} are needed")
        # An honest site never gives both kinds of share for one peer: with both, the
        # coordinator could strip every mask from that peer's input.
        for peer in survivors:
            if self._revealed.get((round_no, peer)) == "sk" or peer in self._burned:
                raise SecAggError(f"already revealed the key of {peer}; refusing its round seed")
        for peer in dropped:
            if self._revealed.get((round_no, peer)) == "b":
                raise SecAggError(f"already revealed the round seed of {peer}; refusing its key")
        out = Unmasking(self.site)
        for peer in survivors | dropped:
            if peer not in roster.entries:
                raise SecAggError(f"{peer} holds no keys in this epoch")
            held = self._own if peer == self.site else self._inbox.get(peer)
            if held is None:
                continue  # its shares never reached this site: others must answer for it
            if peer in survivors:
                share = held["b"].get(str(round_no))
                if share is not None:
                    out.b_shares[peer] = tuple(share)
                    self._revealed[(round_no, peer)] = "b"
            elif peer != self.site:
                out.sk_shares[peer] = tuple(held["sk"])
                self._revealed[(round_no, peer)] = "sk"
                self._burned.add(peer)
        return out


# -- the coordinator's side -------------------------------------------------------------------


class SecAggCoordinator:
    """What the coordinator keeps for an epoch: the roster, routed ciphertexts, commitments.

    It never holds a private key or a seed of a site until enough shares rebuild one
    of a site that survived (its round seed) or that vanished (its mask key).
    """

    def __init__(self, roster: Roster):
        self.roster = roster
        self.inboxes: dict[str, dict[str, bytes]] = {s: {} for s in roster.entries}
        self.commitments: dict[str, dict[int, str]] = {}
        self.delivered: set[str] = set()
        self.burned: set[str] = set()

    def route(self, sender: str, outbox: Mapping[str, bytes], commitments: Mapping[int, str]) -> None:
        for receiver, blob in outbox.items():
            if receiver in self.inboxes:
                self.inboxes[receiver][sender] = blob
        self.commitments[sender] = {int(r): c for r, c in commitments.items()}

    def inbox(self, site: str) -> dict[str, bytes] | None:
        """The ciphertexts routed to ``site``, or None once a call or task of its took them."""
        return None if site in self.delivered else dict(self.inboxes[site])

    @property
    def keyed(self) -> set[str]:
        """Sites whose shares went out: the only ones that may take part in a round."""
        return set(self.commitments)

    def unmask(self, round_no: int, masked: Mapping[str, np.ndarray], participants: Iterable[str],
               answers: Iterable[Unmasking]) -> np.ndarray:
        """The plain sum (ring, ``uint64``) of the masked inputs that arrived.

        ``participants`` masked with each other; those absent from ``masked``
        vanished after the shares went out and their pairwise masks are removed with
        their rebuilt keys. Raises :class:`SecAggError` when too few shares came back
        or a rebuilt secret fails its check: the caller must not use the round.
        """
        roster, t = self.roster, self.roster.threshold
        participants = set(participants)
        survivors = set(masked)
        dropped = participants - survivors
        if not survivors <= participants:
            raise SecAggError("a masked input came from a site outside the round")
        if len(survivors) < t:
            raise SecAggError(f"only {len(survivors)} masked inputs; {t} are needed to unmask")
        answers = list(answers)
        n = next(iter(masked.values())).size
        total = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for y in masked.values():
                if y.dtype != np.uint64 or y.size != n:
                    raise SecAggError("masked inputs differ in shape or type")
                total += y
            for site in sorted(survivors):
                shares = [a.b_shares[site] for a in answers if site in a.b_shares]
                seed = self._rebuild(shares, t, lambda s: _commit(s) == self.commitments[site][round_no],
                                     f"the round seed of {site}")
                total -= prg(_self_seed(seed, round_no), n)
            for site in sorted(dropped):
                shares = [a.sk_shares[site] for a in answers if site in a.sk_shares]
                s_pk = roster.entries[site][2]
                raw = self._rebuild(shares, t, lambda s: _x25519_pub(s) == s_pk, f"the mask key of {site}")
                key = X25519PrivateKey.from_private_bytes(raw)
                self.burned.add(site)
                for k in survivors:
                    shared = key.exchange(_pub(roster.entries[k][2]))
                    m = prg(_mask_seed(shared, roster.context, round_no), n)
                    # Survivor k added +m if the dropped site comes after it, -m otherwise.
                    if roster.index(site) > roster.index(k):
                        total -= m
                    else:
                        total += m
        return total

    @staticmethod
    def _rebuild(shares: list, t: int, check, what: str) -> bytes:
        if len(shares) < t:
            raise SecAggError(f"only {len(shares)} shares of {what} came back; {t} are needed")
        # Try t-subsets until one passes the check: a corrupt share cannot pass for a good one.
        for combo in itertools.islice(itertools.combinations(shares, t), 64):
            secret = shamir_combine(combo)
            if secret < 2**256:
                raw = secret.to_bytes(32, "big")
                if check(raw):
                    return raw
        raise SecAggError(f"the shares of {what} do not rebuild it; a share was corrupted")


def _x25519_pub(raw: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    except ValueError:
        return b""
