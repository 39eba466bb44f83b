"""What a certificate says about its holder: cluster, role, name and site.

Certificates of a cluster's CA carry the holder's identity in two places:

* the subject: ``O=Lepton Lab, OU=<cluster id>/<role>, CN=<name>``;
* for workers, subject alternative name URIs ``lepton://site/<site>`` naming
  the one site the worker may serve and ``lepton://kind/<kind>`` its kind
  (``cloud`` or ``edge``). ``lepton://site/*`` (any site, any kind) goes only to
  the control plane's own in-process workers; a worker certificate without a
  site URI may serve no site.

:func:`peer_identity` reads these from the dictionary ``ssl.SSLSocket.getpeercert()``
returns, which is what distributed's TLS comms keep in ``comm.extra_info["peercert"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Scheme and prefix of the SAN URI naming a worker's site.
SITE_URI = "lepton://site/"
#: Scheme and prefix of the SAN URI naming a worker's site kind.
KIND_URI = "lepton://kind/"
#: The site of a certificate that may serve every site.
ANY_SITE = "*"
#: Site kinds, as worker resources name them.
KINDS = ("cloud", "edge")


def site_uri(site: str) -> str:
    """The SAN URI that binds a certificate to ``site``."""
    return SITE_URI + site


def kind_uri(kind: str) -> str:
    """The SAN URI that binds a certificate to a site kind."""
    return KIND_URI + kind


def default_kind(site: str) -> str:
    """The kind of a site nothing else describes: ``edge`` for ``edge…`` names, else ``cloud``."""
    return "edge" if site.startswith("edge") else "cloud"


@dataclass(frozen=True)
class PeerIdentity:
    """Who the peer of a TLS connection is, by its certificate."""

    cluster: str
    role: str
    name: str
    serial: int
    site: str | None  # None: the certificate names no site
    kind: str | None = None


def peer_identity(peercert: dict[str, Any] | None) -> PeerIdentity | None:
    """The identity in a ``getpeercert()`` dictionary; None without a certificate."""
    if not peercert:
        return None
    fields: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            fields.setdefault(str(key), str(value))
    cluster, _, role = fields.get("organizationalUnitName", "").rpartition("/")
    uris = [str(v) for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    sites = [u[len(SITE_URI):] for u in uris if u.startswith(SITE_URI)]
    kinds = [u[len(KIND_URI):] for u in uris if u.startswith(KIND_URI)]
    try:
        serial = int(str(peercert.get("serialNumber", "")), 16)
    except ValueError:
        serial = -1
    return PeerIdentity(cluster=cluster, role=role, name=fields.get("commonName", ""), serial=serial,
                        site=sites[0] if len(sites) == 1 else None,
                        kind=kinds[0] if len(kinds) == 1 else None)


__all__ = ["ANY_SITE", "KINDS", "KIND_URI", "SITE_URI", "PeerIdentity", "default_kind", "kind_uri",
           "peer_identity", "site_uri"]
