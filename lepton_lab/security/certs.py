"""A certificate authority per cluster, the TLS certificates it issues, and one-time join tokens.

Every cluster gets its own CA (EC P-256). The scheduler, each worker and each
user's client present a certificate from that CA, and distributed's TLS
requires one from both sides of every connection (mutual TLS), so only holders
of the cluster's certificates can talk to it. Distributed does not check host
names against certificates (it disables hostname checks, expecting one CA per
cluster); the SANs are there for other tools and for people reading them.

A worker on another machine joins with a one-time join token: an admin makes
one with ``ca.join_token(site)``, the worker presents it (through the server)
and gets a worker certificate back from ``ca.redeem(token)``. Only SHA-256
hashes of tokens are stored; the tokens themselves are 256-bit random.

A worker certificate names the one site it may serve, as the SAN URI
``lepton://site/<site>`` (see :mod:`lepton_lab.security.peers`); the join token
fixes that site, so a machine joined for one site cannot serve another.

Files in the CA directory, all 0600 in a 0700 directory: ``ca.key``,
``ca.crt``, ``joins.json`` (token hashes), ``issued.json`` and ``revoked.json``
(see :mod:`lepton_lab.security.revocation`) and the ``<role>-<name>.crt/.key``
pairs written by ``security()``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed.security import Security

from lepton_lab.errors import AlreadyExists, ConfigError, NotFound, PermissionDenied
from lepton_lab.security.files import locked, write_atomic, write_new
from lepton_lab.security.peers import ANY_SITE, KINDS, default_kind, kind_uri, site_uri
from lepton_lab.security.revocation import CertBook, IssuedRecord

#: Roles a certificate can be issued for, as distributed names them.
ROLES = ("client", "worker", "scheduler")

#: Prefix of join tokens, so a pasted token is recognisable in logs and forms.
JOIN_TOKEN_PREFIX = "ljt_"

_LOCAL_HOSTS = ("127.0.0.1", "localhost")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Clocks on edge machines drift; certificates start a little in the past.
_CLOCK_SKEW = timedelta(minutes=5)
# Redeemed join tokens are kept this long after expiry, to say "already used" rather than "unknown".
_KEEP_SPENT = timedelta(days=1)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key (PEM), with the CA certificate that vouches for it."""

    cert_pem: str
    key_pem: str
    ca_pem: str
    role: str
    common_name: str
    expires: str  # ISO 8601, UTC

    def security(self) -> Security:
        """A ``distributed.Security`` for this certificate's role, from the PEM text in memory.

        For processes that receive the certificate over the wire (a user's
        kernel, a joining worker); distributed copies the PEMs into a private
        temporary directory while it builds each TLS context.
        """
        return Security(
            require_encryption=True,
            tls_ca_file=self.ca_pem,
            **{f"tls_{self.role}_cert": self.cert_pem, f"tls_{self.role}_key": self.key_pem},
        )

    def to_dict(self) -> dict[str, str]:
        """The JSON shape sent to a client or joining worker."""
        return asdict(self)

    @property
    def serial(self) -> int:
        """The certificate's serial number (what revocation lists name)."""
        return x509.load_pem_x509_certificate(self.cert_pem.encode()).serial_number

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> IssuedCert:
        """Rebuild from ``to_dict`` output."""
        return cls(**{key: str(data[key]) for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class JoinRecord:
    """One join token as stored in ``joins.json``: its hash, never the token."""

    sha256: str
    site: str
    created: str
    expires: str
    used: str | None = None
    kind: str | None = None


class ClusterCA:
    """The certificate authority of one cluster, kept in its own directory.

    Make one with ``ClusterCA.create`` and open it again with ``ClusterCA.load``.
    """

    def __init__(
        self, directory: Path, cluster_id: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ):
        self.directory = Path(directory)
        self.cluster_id = cluster_id
        self._key = key
        self.cert = cert

    # -- life cycle -----------------------------------------------------------------

    @classmethod
    def create(
        cls, cluster_id: str, directory: str | Path, *, lifetime: timedelta = timedelta(days=365)
    ) -> ClusterCA:
        """Make a new CA for ``cluster_id`` in ``directory``; AlreadyExists if one is there."""
        if not isinstance(cluster_id, str) or not _NAME.match(cluster_id):
            raise ConfigError(f"cluster id {cluster_id!r} may hold only letters, digits, '.', '_' and '-'")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lepton Lab"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster_id),
                x509.NameAttribute(NameOID.COMMON_NAME, f"lepton-ca-{cluster_id}"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            # path_length=0: this CA signs leaf certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # The key goes first and without overwriting, so two racing creators cannot mix halves.
        if not write_new(directory / "ca.key", key_pem):
            raise AlreadyExists(f"{directory} already holds a cluster CA; open it with ClusterCA.load")
        write_atomic(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cluster_id, key, cert)

    @classmethod
    def load(cls, directory: str | Path) -> ClusterCA:
        """Open the CA kept in ``directory``; NotFound if there is none."""
        directory = Path(directory)
        try:
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        except FileNotFoundError:
            raise NotFound(f"no cluster CA in {directory}; make one with ClusterCA.create") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise ConfigError(f"{directory}: ca.key does not belong to ca.crt")
        cluster_id = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        return cls(directory, str(cluster_id), key, cert)

    # -- what it holds ----------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """Path of the CA certificate (PEM)."""
        return self.directory / "ca.crt"

    @property
    def ca_pem(self) -> str:
        """The CA certificate as PEM text."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the CA certificate (hex), for people to compare."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    # -- issuing ----------------------------------------------------------------------

    def issue(
        self,
        common_name: str,
        role: str = "client",
        hosts: Iterable[str] = _LOCAL_HOSTS,
        lifetime: timedelta = timedelta(hours=12),
        site: str | None = None,
        kind: str | None = None,
    ) -> IssuedCert:
        """A fresh key and certificate for ``role``, named ``common_name``, valid for ``lifetime``.

        Clients may only authenticate as TLS clients; schedulers and workers
        both listen and dial out, so they may act as server and client. A
        worker certificate serves ``site`` only (``"*"``: any site; None: none),
        of ``kind`` (by default ``edge`` for ``edge…`` sites, else ``cloud``).
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not isinstance(common_name, str) or not common_name.strip():
            raise ValueError("a certificate needs a non-empty common name")
        if site is not None and site != ANY_SITE and not _NAME.match(str(site)):
            raise ConfigError(f"site {site!r} may hold only letters, digits, '.', '_' and '-'")
        if site is not None and site != ANY_SITE:
            kind = kind or default_kind(site)
            if kind not in KINDS:
                raise ConfigError(f"site kind {kind!r} is not one of {', '.join(KINDS)}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        # Never outlive the CA: a chain with an expired root fails anyway, with a worse message.
        expires = min(now + lifetime, self.cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role != "client":
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lepton Lab"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{self.cluster_id}/{role}"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
        )
        names = _subject_alt_names(hosts)
        if site is not None:
            names.append(x509.UniformResourceIdentifier(site_uri(site)))
            if site != ANY_SITE:
                names.append(x509.UniformResourceIdentifier(kind_uri(str(kind))))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        CertBook(self.directory).record(
            IssuedRecord(cert.serial_number, role, common_name, site, expires.isoformat(), kind))
        return IssuedCert(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            ca_pem=self.ca_pem,
            role=role,
            common_name=common_name,
            expires=expires.isoformat(),
        )

    def security(
        self,
        role: str,
        *more_roles: str,
        common_name: str | None = None,
        hosts: Iterable[str] = _LOCAL_HOSTS,
        lifetime: timedelta = timedelta(hours=12),
    ) -> Security:
        """A ``distributed.Security`` requiring TLS, with a fresh certificate for each role named.

        Name several roles for an in-process cluster, whose one Security object
        serves scheduler, workers and client:
        ``ca.security("scheduler", "worker", "client")``; its worker certificate
        may serve any site. The certificates are written as 0600 files in the
        CA directory and passed by path, so keys never pass through temporary files.
        """
        hosts = tuple(hosts)
        files: dict[str, str] = {}
        for each in (role, *more_roles):
            issued = self.issue(common_name or each, each, hosts, lifetime,
                                site=ANY_SITE if each == "worker" else None)
            stem = f"{each}-{re.sub(r'[^A-Za-z0-9_.-]', '_', issued.common_name)}"
            cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
            write_atomic(key_path, issued.key_pem.encode())
            write_atomic(cert_path, issued.cert_pem.encode())
            files[f"tls_{each}_cert"], files[f"tls_{each}_key"] = str(cert_path), str(key_path)
        return Security(require_encryption=True, tls_ca_file=str(self.ca_file), **files)

    # -- join tokens ------------------------------------------------------------------

    def join_token(self, site: str, ttl: timedelta = timedelta(hours=1), kind: str | None = None) -> str:
        """A one-time token that lets one worker at ``site`` (of ``kind``) obtain a worker certificate;
        shown once."""
        if not isinstance(site, str) or not _NAME.match(site):
            raise ConfigError(f"site {site!r} may hold only letters, digits, '.', '_' and '-'")
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"site kind {kind!r} is not one of {', '.join(KINDS)}")
        token = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        record = JoinRecord(_sha256(token), site, now.isoformat(), (now + ttl).isoformat(), kind=kind)
        with locked(self._joins_path):
            records = self._read_joins()
            records.append(record)
            self._write_joins(records, now)
        return token

    def redeem(
        self,
        token: str,
        hosts: Iterable[str] = _LOCAL_HOSTS,
        lifetime: timedelta = timedelta(days=7),
    ) -> IssuedCert:
        """Spend a join token on a worker certificate for its site.

        PermissionDenied if the token is unknown, already used or expired.
        """
        digest = _sha256(str(token))
        now = datetime.now(timezone.utc)
        with locked(self._joins_path):
            records = self._read_joins()
            index = next((i for i, r in enumerate(records) if secrets.compare_digest(r.sha256, digest)), None)
            if index is None:
                raise PermissionDenied(
                    f"this join token is not known to cluster {self.cluster_id}; ask an admin for a new one"
                )
            record = records[index]
            if record.used is not None:
                raise PermissionDenied(
                    f"this join token was already used at {record.used}; each token admits one worker, "
                    f"ask an admin for a new one"
                )
            if datetime.fromisoformat(record.expires) <= now:
                raise PermissionDenied(
                    f"this join token expired at {record.expires}; ask an admin for a new one"
                )
            # Spend the token before issuing: a crash in between wastes a token, never reuses one.
            records[index] = JoinRecord(
                record.sha256, record.site, record.created, record.expires, now.isoformat(), record.kind
            )
            self._write_joins(records, now)
        return self.issue(f"{record.site}-worker-{secrets.token_hex(3)}", "worker", hosts, lifetime,
                          site=record.site, kind=record.kind)

    def revoke(self, *, name: str | None = None, role: str | None = None,
               serials: tuple[int, ...] = ()) -> list[int]:
        """Revoke live certificates by holder name (and role) or serial; the serials newly revoked."""
        return CertBook(self.directory).revoke(name=name, role=role, serials=tuple(serials))

    def revoked(self) -> list[int]:
        """Serials of revoked certificates that have not expired yet."""
        return CertBook(self.directory).revoked()

    @property
    def _joins_path(self) -> Path:
        return self.directory / "joins.json"

    def _read_joins(self) -> list[JoinRecord]:
        try:
            data = json.loads(self._joins_path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            raise ConfigError(
                f"{self._joins_path}: not valid JSON; delete it to cancel all pending join tokens"
            ) from None
        return [JoinRecord(**item) for item in data.get("tokens", [])]

    def _write_joins(self, records: list[JoinRecord], now: datetime) -> None:
        keep = [r for r in records if datetime.fromisoformat(r.expires) + _KEEP_SPENT > now]
        data = {"version": 1, "tokens": [asdict(r) for r in keep]}
        write_atomic(self._joins_path, json.dumps(data, indent=1).encode())


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


__all__ = ["JOIN_TOKEN_PREFIX", "ROLES", "ClusterCA", "IssuedCert", "JoinRecord"]
