"""Certificates that die when permission does, and live as long as their cluster.

* :func:`revoke_user` revokes every client certificate a user was issued, on every
  cluster or on some (``revoked.json`` in each cluster's CA), and tells each running
  scheduler's gate (:mod:`lepton_lab.cluster.gate`), which closes the user's open
  connections and refuses new ones; :func:`revoke_offline` does the same from outside
  the server (``lepton-lab revoke``), from the files the server keeps.
* :func:`renew_certificates` renews, before they expire, the control plane's
  certificates of each running cluster (rewritten in place in the CA directory), the
  scheduler's own certificate (loaded into its live TLS contexts: no restart), the
  certificates of the control plane's own local workers and nannies (their files,
  read again) and of every worker bound to a site (a new certificate for its site,
  loaded into the live contexts of the worker and its nanny).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..cluster.gate import bound_workers, push_revocations, push_scheduler_certificate, renew_contexts
from ..cluster.launcher import ManagedCluster
from ..cluster.workers import workers_now
from ..errors import ConfigError
from ..security.audit import AuditLog
from ..security.certs import ClusterCA

# The services object this works for (``lepton_lab.services.Services``); not imported, as
# the services import this module.
Services = Any

log = logging.getLogger(__name__)

#: Renew a certificate once it has less than this left.
RENEW_MARGIN = timedelta(hours=3)
#: The common name of the control plane's own certificates of a cluster.
SERVER_NAME = "lepton-server"
#: How long a renewed certificate of a worker bound to a site lives.
WORKER_LIFETIME = timedelta(days=7)


def revoke_user(services: Services, user: str, *, by: str = SERVER_NAME, clusters: Iterable[str] | None = None,
                reason: str = "") -> dict[str, int]:
    """Revoke ``user``'s client certificates on every cluster (or those in ``clusters``); how many, by cluster id.

    Running clusters' gates close the user's open connections at once; one audit line says
    what was revoked, by whom and why.
    """
    live = {c.id: c for c in services.manager.list()}
    chosen = None if clusters is None else set(clusters)
    out: dict[str, int] = {}
    closed, unreached = 0, []
    for cid, record in list(services.records.items()):
        if chosen is not None and cid not in chosen:
            continue
        if not record.get("ca_dir") or not Path(record["ca_dir"]).exists():
            continue
        serials = ClusterCA.load(record["ca_dir"]).revoke(name=user, role="client")
        out[cid] = len(serials)
        c = live.get(cid)
        if serials and c is not None and c.security is not None:
            try:
                closed += push_revocations(c.listen_address, c.security, serials)
            except Exception as e:  # the file keeps the revocation; say which gate did not hear of it
                log.warning("revoking %s on cluster %s: %s: %s", user, c.name, type(e).__name__, e)
                unreached.append(cid)
    detail: dict[str, Any] = {"unreached": unreached} if unreached else {}
    services.audit.record(by, "clusters:revoke", f"users:{user}", "allow", reason=reason,
                          certificates=sum(out.values()), clusters=len(out), connections_closed=closed, **detail)
    return out


def revoke_offline(user: str, *, by: str, home: Path | None = None, audit: AuditLog | None = None) -> dict[str, int]:
    """Revoke ``user``'s client certificates from outside the server (``lepton-lab revoke``).

    Reads the cluster records and CAs the server keeps under ``home``, and tells each running
    scheduler's gate as the control plane (its certificate in the cluster's CA directory).
    """
    from .. import config

    home = Path(home or config.home())
    path = home / "clusters.json"
    try:
        records = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON") from None
    out: dict[str, int] = {}
    closed, unreached = 0, []
    for cid, record in records.items():
        ca_dir = Path(record.get("ca_dir") or "")
        if not record.get("ca_dir") or not ca_dir.exists():
            continue
        serials = ClusterCA.load(ca_dir).revoke(name=user, role="client")
        out[cid] = len(serials)
        address = record.get("scheduler_address")
        if serials and record.get("status") == "running" and address:
            try:
                closed += push_revocations(address, control_security(ca_dir), serials)
            except Exception as e:
                log.warning("revoking %s on cluster %s: %s: %s", user, record.get("name"), type(e).__name__, e)
                unreached.append(cid)
    detail: dict[str, Any] = {"unreached": unreached} if unreached else {}
    (audit or AuditLog(config.audit_path())).record(
        by, "clusters:revoke", f"users:{user}", "allow", reason="lepton-lab revoke",
        certificates=sum(out.values()), clusters=len(out), connections_closed=closed, **detail)
    return out


def control_security(ca_dir: Path) -> Any:
    """The control plane's ``Security`` of a cluster, from the files in its CA directory."""
    from distributed import Security

    ca = ClusterCA.load(ca_dir)
    cert, key = ca_dir / f"scheduler-{SERVER_NAME}.crt", ca_dir / f"scheduler-{SERVER_NAME}.key"
    if not cert.exists() or not key.exists():
        raise ConfigError(f"{ca_dir}: no control-plane certificate; is this a cluster's CA directory?")
    return Security(require_encryption=True, tls_ca_file=str(ca.ca_file), tls_scheduler_cert=str(cert),
                    tls_scheduler_key=str(key))


def _expires(security: Any) -> datetime | None:
    from cryptography import x509

    path = getattr(security, "tls_scheduler_cert", None)
    if not path or "\n" in str(path):
        return None
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def renew_certificates(services: Services, margin: timedelta = RENEW_MARGIN) -> list[str]:
    """Renew what expires within ``margin`` on every running TLS cluster; the ids renewed."""
    renewed = []
    for c in services.manager.list():
        ca_dir = (services.records.get(c.id) or {}).get("ca_dir")
        if c.security is None or not ca_dir:
            continue
        expires = _expires(c.security)
        if expires is None or expires - datetime.now(timezone.utc) > margin:
            continue
        try:
            renew_cluster(c, ClusterCA.load(ca_dir))
            renewed.append(c.id)
        except Exception as e:  # one cluster must not stop the others' renewal
            log.warning("renewing certificates of cluster %s: %s: %s", c.name, type(e).__name__, e)
    return renewed


def renew_cluster(c: ManagedCluster, ca: ClusterCA) -> None:
    """Renew ``c``'s certificates now, without restarting anything."""
    from ..cluster import accounts

    # The same file names: the control plane's Security picks the new ones up for every new context.
    ca.security("scheduler", "worker", "client", common_name=SERVER_NAME)
    security: Any = c.security
    scheduler = getattr(c.cluster, "scheduler", None)
    if isinstance(scheduler, accounts.AccountScheduler):
        issued = ca.issue(f"{scheduler.name}-{secrets.token_hex(3)}", "scheduler", scheduler.hosts,
                          accounts.CERT_LIFETIME)
        cert_pem, key_pem = issued.cert_pem, issued.key_pem
    else:
        cert_pem = Path(security.tls_scheduler_cert).read_text()
        key_pem = Path(security.tls_scheduler_key).read_text()
    push_scheduler_certificate(c.listen_address, security, cert_pem, key_pem)
    client = _fresh_client(c)
    bound = client.run_on_scheduler(bound_workers)
    local = [a for a in workers_now(client) if a not in bound]
    if local:  # the control plane's own workers and nannies read the rewritten files
        client.run(reload_worker_certificate, workers=local)
        client.run(reload_worker_certificate, workers=local, nanny=True)
    for address, (_, site, kind) in bound.items():
        host = address.rpartition("://")[2].rsplit(":", 1)[0].strip("[]")
        issued = ca.issue(f"{site}-worker-{secrets.token_hex(3)}", "worker", (host,), WORKER_LIFETIME,
                          site=site, kind=kind)
        client.run(load_worker_certificate, issued.cert_pem, issued.key_pem, workers=[address])
        client.run(load_worker_certificate, issued.cert_pem, issued.key_pem, workers=[address], nanny=True)


def _fresh_client(c: ManagedCluster) -> Any:
    from ..cluster.clients import open_client

    old = getattr(c, "server_client", None)
    if old is not None:
        try:
            old.close(timeout=5)
        except Exception:
            pass
    c.server_client = open_client(c.listen_address, security=c.security, timeout=10, set_as_default=False)
    return c.server_client


def load_worker_certificate(cert_pem: str, key_pem: str, dask_worker: Any = None) -> int:
    """Run on a worker or nanny (``client.run`` passes it): use this certificate from now on."""
    return renew_contexts(dask_worker, "worker", cert_pem, key_pem)


def reload_worker_certificate(dask_worker: Any) -> int:
    """Run on a worker or nanny: load its certificate files again into its live TLS contexts."""
    security = getattr(dask_worker, "security", None)
    cert, key = getattr(security, "tls_worker_cert", None), getattr(security, "tls_worker_key", None)
    if not cert or not key or "\n" in cert:
        return 0
    return renew_contexts(dask_worker, "worker", Path(cert).read_text(), Path(key).read_text())


__all__ = ["RENEW_MARGIN", "control_security", "load_worker_certificate", "reload_worker_certificate",
           "renew_certificates", "renew_cluster", "revoke_offline", "revoke_user"]
