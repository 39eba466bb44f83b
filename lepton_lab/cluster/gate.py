"""The scheduler's gate: every peer is who its certificate says, and serves only its site.

:class:`SiteGate` is a scheduler plugin installed on every TLS cluster the server
starts. It reads the peer certificate of each connection (distributed's TLS
comms keep it in ``comm.extra_info["peercert"]``; see :mod:`lepton_lab.security.peers`) and

* refuses any connection whose certificate is revoked or from another cluster;
* refuses a worker whose certificate is not a worker's, names no site, or whose
  name (``<site>-<n>``) or resources (its site and kind, ``GPU``) claim anything
  else than the site and kind its certificate names, also when resources are
  changed later;
* takes new revocations from the control plane (:func:`push_revocations`),
  closing the connections of revoked certificates at once;
* swaps the scheduler's own certificate on its live TLS contexts
  (:func:`push_scheduler_certificate`), so it is renewed without a restart.

Refusals are one log line each, and an event on the ``lepton-gate`` topic.
Only a peer holding a scheduler certificate of the cluster (the control plane)
may revoke or renew.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from ..security.files import write_atomic
from ..security.peers import ANY_SITE, KINDS, PeerIdentity, peer_identity

logger = logging.getLogger(__name__)

#: Event topic of refusals.
TOPIC = "lepton-gate"
#: Scheduler handlers the gate adds.
REVOKE_OP = "lepton_revoke"
RENEW_OP = "lepton_renew_certificate"
#: Resources a worker may hold whatever its site.
_FREE_RESOURCES = frozenset({"GPU"})


def worker_refusal(who: PeerIdentity | None, cluster: str, name: Any,
                   resources: dict[str, Any] | None) -> str | None:
    """Why a worker with certificate ``who`` may not join as ``name`` with ``resources``; None if it may."""
    if who is None:
        return "it presented no certificate"
    if who.cluster != cluster:
        return f"its certificate is for cluster {who.cluster or '?'}, not {cluster}"
    if who.role != "worker":
        return f"its certificate is a {who.role or '?'} certificate, not a worker's"
    if who.site is None:
        return "its certificate names no site"
    if who.site == ANY_SITE:
        return None
    if not re.fullmatch(re.escape(who.site) + r"-\d+", str(name)):
        return f"its name {name} is not a worker name of site {who.site}, the site its certificate names"
    return resource_refusal(who, resources)


def resource_refusal(who: PeerIdentity, resources: dict[str, Any] | None) -> str | None:
    """Why a worker certified as ``who`` may not hold ``resources``; None if it may."""
    if who.site == ANY_SITE or who.site is None:
        return None
    allowed = _FREE_RESOURCES | {who.site, who.kind}
    claimed = sorted(str(r) for r in resources or {} if r not in allowed)
    if not claimed:
        return None
    what = "site kind" if all(r in KINDS for r in claimed) else "resources"
    return (f"it claims {what} {', '.join(claimed)} beyond site {who.site} ({who.kind}), "
            "the one its certificate names")


class SiteGate(SchedulerPlugin):
    """Checks each peer's certificate on connect, and each worker's site claims (see the module)."""

    name = "lepton-site-gate"

    def __init__(self, cluster: str, revoked: Iterable[int] = ()):
        self.cluster = cluster
        self.revoked = {int(s) for s in revoked}
        self.scheduler: Any = None
        self._workers: dict[Any, PeerIdentity] = {}  # worker name -> certificate
        self._names: dict[str, Any] = {}  # worker address -> name
        self._comms: dict[int, weakref.WeakSet] = {}  # serial -> open comms

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        for listener in scheduler.listeners:
            if hasattr(listener, "comm_handler"):
                listener.comm_handler = self._gated(listener.comm_handler)
        handlers = scheduler.handlers
        handlers["register-worker"] = self._registering(handlers["register-worker"])
        add_resources = scheduler.add_resources
        handlers["set_resources"] = scheduler.add_resources = self._resources_guard(add_resources)
        handlers[REVOKE_OP] = self._revoke
        handlers[RENEW_OP] = self._renew

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is not None:
            self._names[worker] = ws.name

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self._workers.pop(self._names.pop(worker, None), None)

    # -- connections -------------------------------------------------------------------------

    def _gated(self, inner: Any) -> Any:
        async def handle(comm: Any) -> None:
            who = peer_identity(comm.extra_info.get("peercert"))
            reason = self._connection_refusal(who)
            if reason is not None:
                await self._refuse(comm, reason)
                return
            assert who is not None
            # The server handles the comm in a task of its own: the set forgets it once it is gone.
            if len(self._comms) > 256:
                self._comms = {k: v for k, v in self._comms.items() if any(not c.closed() for c in v)}
            self._comms.setdefault(who.serial, weakref.WeakSet()).add(comm)
            await inner(comm)

        return handle

    def _connection_refusal(self, who: PeerIdentity | None) -> str | None:
        if who is None:
            return "it presented no certificate"
        if who.serial in self.revoked:
            return f"its certificate ({who.role} {who.name}, serial {who.serial:x}) is revoked"
        if who.cluster != self.cluster:
            return f"its certificate is for cluster {who.cluster or '?'}, not {self.cluster}"
        return None

    async def _refuse(self, comm: Any, reason: str) -> None:
        """Answer the peer's first message with ``reason`` in the shape it expects, then hang up."""
        self._note(comm.peer_address, reason)
        try:
            msg = await asyncio.wait_for(comm.read(), 5)
            op = msg.get("op") if isinstance(msg, dict) else None
            text = f"cluster {self.cluster} refused this connection: {reason}"
            if op == "register-client":
                await comm.write([{"op": "stream-start", "error": text}])
            elif op == "register-worker":
                await comm.write({"status": "error", "message": text, "time": time.time()})
        except Exception as e:  # the peer left first
            logger.debug("refused peer %s: %s", comm.peer_address, e)
        finally:
            comm.abort()

    def _note(self, peer: Any, reason: str) -> None:
        logger.warning("lepton gate: refused %s: %s", peer, reason)
        if self.scheduler is not None:
            self.scheduler.log_event(TOPIC, {"action": "refuse", "peer": str(peer), "reason": reason})

    # -- workers -------------------------------------------------------------------------------

    def _registering(self, inner: Any) -> Any:
        async def register_worker(comm: Any, **msg: Any) -> Any:
            who = peer_identity(comm.extra_info.get("peercert"))
            name = msg.get("name")
            reason = worker_refusal(who, self.cluster, name, msg.get("resources"))
            if reason is not None:
                self._note(f"worker {name} at {msg.get('address')}", reason)
                text = f"cluster {self.cluster} refused worker {name}: {reason}"
                await comm.write({"status": "error", "message": text, "time": time.time()})
                return None
            assert who is not None
            if name not in self.scheduler.aliases:  # distributed refuses a name taken
                self._workers[name] = who
            return await inner(comm, **msg)

        return register_worker

    def _resources_guard(self, inner: Any) -> Any:
        def add_resources(worker: str, resources: dict | None = None) -> Any:
            ws = self.scheduler.workers.get(worker)
            who = self._workers.get(ws.name) if ws is not None else None
            reason = resource_refusal(who, resources) if who is not None and resources else None
            if reason is None:
                return inner(worker=worker, resources=resources)
            self._note(f"worker {ws.name} at {worker}", reason)
            self.scheduler.loop.add_callback(
                self.scheduler.remove_worker, address=worker, stimulus_id="lepton-gate-resources")
            return "OK"

        return add_resources

    # -- control plane -------------------------------------------------------------------------

    def _require_control_plane(self, comm: Any) -> None:
        who = peer_identity(comm.extra_info.get("peercert"))
        if who is None or who.role != "scheduler" or who.cluster != self.cluster:
            raise PermissionError("only the control plane may change the gate")

    def _revoke(self, comm: Any, serials: list[str]) -> int:
        """Revoke ``serials`` (hex) and close their open connections; how many connections closed."""
        self._require_control_plane(comm)
        closed = 0
        for serial in (int(str(s), 16) for s in serials):
            self.revoked.add(serial)
            for open_comm in list(self._comms.pop(serial, ())):
                open_comm.abort()
                closed += 1
        if closed:
            logger.warning("lepton gate: closed %d connections of revoked certificates", closed)
        return closed

    def _renew(self, comm: Any, cert_pem: str, key_pem: str) -> str:
        """Use this certificate for every new connection from now on."""
        self._require_control_plane(comm)
        renew_contexts(self.scheduler, "scheduler", cert_pem, key_pem)
        return "OK"


def bound_workers(dask_scheduler: Any) -> dict[str, tuple[Any, str, str | None]]:
    """Run on the scheduler: ``{address: (name, site, kind)}`` of its workers bound to one site."""
    gate = dask_scheduler.plugins.get(SiteGate.name)
    if not isinstance(gate, SiteGate):
        return {}
    out = {}
    for address, ws in dask_scheduler.workers.items():
        who = gate._workers.get(ws.name)
        if who is not None and who.site not in (None, ANY_SITE):
            out[address] = (ws.name, who.site, who.kind)
    return out


def cluster_of(security: Any) -> str | None:
    """The cluster a ``Security``'s scheduler certificate belongs to; None if it is not a Lepton one."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    text = getattr(security, "tls_scheduler_cert", None) if security is not None else None
    if not text:
        return None
    try:
        pem = text.encode() if "\n" in text else Path(text).read_bytes()
        units = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME)
    except (OSError, ValueError):
        return None
    cluster, _, role = str(units[0].value).rpartition("/") if units else ("", "", "")
    return cluster if role == "scheduler" and cluster else None


def renew_contexts(server: Any, role: str, cert_pem: str, key_pem: str) -> int:
    """Load a new certificate into the live TLS contexts of a distributed ``server``; how many.

    Listeners and connection pools keep the ``ssl.SSLContext`` they were given,
    and a context takes a new certificate chain for every handshake after
    ``load_cert_chain``; the server's ``Security`` is updated too, for contexts made later.
    """
    contexts: list[ssl.SSLContext] = []
    for listener in getattr(server, "listeners", ()):
        ctx = getattr(listener, "server_args", {}).get("ssl_options")
        if isinstance(ctx, ssl.SSLContext):
            contexts.append(ctx)
    for args in (getattr(server, "connection_args", None), getattr(server.rpc, "connection_args", None)):
        ctx = (args or {}).get("ssl_context")
        if isinstance(ctx, ssl.SSLContext) and all(ctx is not c for c in contexts):
            contexts.append(ctx)
    with tempfile.TemporaryDirectory(prefix="lepton-renew-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, text in ((cert, cert_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        for ctx in contexts:
            ctx.load_cert_chain(cert, key)
    security = getattr(server, "security", None)
    for part, text in (("cert", cert_pem), ("key", key_pem)):
        held = getattr(security, f"tls_{role}_{part}", None) if security is not None else None
        if held and "\n" not in held:  # a file: keep it current for whatever reads it later
            if Path(held).read_text() != text:
                write_atomic(Path(held), text.encode())
        elif security is not None:
            setattr(security, f"tls_{role}_{part}", text)
    return len(contexts)


# -- the control plane's side ------------------------------------------------------------------


def _call(address: str, security: Any, op: str, **kwargs: Any) -> Any:
    """Call ``op`` on the scheduler at ``address`` as the control plane (its scheduler certificate).

    Runs on a private event loop in its own thread, so it works from any thread or loop.
    """
    from distributed.core import rpc

    out: dict[str, Any] = {}

    async def go() -> None:
        args = security.get_connection_args("scheduler")
        async with rpc(address, connection_args=args, timeout=10) as r:
            out["result"] = await getattr(r, op)(**kwargs)

    def run() -> None:
        try:
            asyncio.run(go())
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=run, name="lepton-gate-call")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("result")


def push_revocations(address: str, security: Any, serials: Iterable[int]) -> int:
    """Tell the gate at ``address`` to refuse ``serials`` from now on; connections it closed."""
    # In hex: serials are 159-bit numbers, more than msgpack's integers hold.
    return int(_call(address, security, REVOKE_OP, serials=[f"{int(s):x}" for s in serials]) or 0)


def push_scheduler_certificate(address: str, security: Any, cert_pem: str, key_pem: str) -> None:
    """Give the scheduler at ``address`` a renewed certificate, without restarting it."""
    _call(address, security, RENEW_OP, cert_pem=cert_pem, key_pem=key_pem)


__all__ = ["RENEW_OP", "REVOKE_OP", "TOPIC", "SiteGate", "bound_workers", "cluster_of", "push_revocations",
           "push_scheduler_certificate", "renew_contexts", "resource_refusal", "worker_refusal"]
