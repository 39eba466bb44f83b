"""Which certificates a cluster's CA issued, and which of them are revoked.

Two files in the CA directory, 0600: ``issued.json`` (serial, role, name, site
and expiry of every certificate the CA issued) and ``revoked.json`` (serials
revoked before they expired). Entries leave both files once their certificate
has expired: TLS refuses an expired certificate by itself.

The scheduler never reads these files (it may run under another account, on
another machine); the control plane sends it the revoked serials (see
:mod:`lepton_lab.cluster.gate`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from lepton_lab.errors import ConfigError
from lepton_lab.security.files import locked, write_atomic


@dataclass(frozen=True)
class IssuedRecord:
    """One issued certificate, as ``issued.json`` keeps it."""

    serial: int
    role: str
    name: str
    site: str | None
    expires: str  # ISO 8601, UTC
    kind: str | None = None


class CertBook:
    """``issued.json`` and ``revoked.json`` of the CA in ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @property
    def _issued_path(self) -> Path:
        return self.directory / "issued.json"

    @property
    def _revoked_path(self) -> Path:
        return self.directory / "revoked.json"

    def record(self, entry: IssuedRecord) -> None:
        """Remember a certificate just issued."""
        with locked(self._issued_path):
            entries = self._read(self._issued_path)
            entries.append(entry)
            self._write(self._issued_path, entries)

    def issued(self) -> list[IssuedRecord]:
        """Certificates issued and not yet expired."""
        return self._read(self._issued_path)

    def revoke(self, *, name: str | None = None, role: str | None = None,
               serials: tuple[int, ...] = ()) -> list[int]:
        """Revoke the live certificates named ``name`` (of ``role``) and those in ``serials``.

        Returns the serials newly revoked.
        """
        chosen = [e for e in self.issued()
                  if e.serial in serials or (name is not None and e.name == name
                                             and (role is None or e.role == role))]
        with locked(self._revoked_path):
            revoked = self._read(self._revoked_path)
            known = {e.serial for e in revoked}
            new = [e for e in chosen if e.serial not in known]
            self._write(self._revoked_path, revoked + new)
        return [e.serial for e in new]

    def revoked(self) -> list[int]:
        """Serials revoked whose certificates have not expired yet."""
        return [e.serial for e in self._read(self._revoked_path)]

    def _read(self, path: Path) -> list[IssuedRecord]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            raise ConfigError(f"{path}: not valid JSON") from None
        now = datetime.now(timezone.utc)
        entries = [IssuedRecord(**item) for item in data.get("certificates", [])]
        return [e for e in entries if datetime.fromisoformat(e.expires) > now]

    def _write(self, path: Path, entries: list[IssuedRecord]) -> None:
        now = datetime.now(timezone.utc)
        keep = [asdict(e) for e in entries if datetime.fromisoformat(e.expires) > now]
        write_atomic(path, json.dumps({"version": 1, "certificates": keep}, indent=1).encode())


__all__ = ["CertBook", "IssuedRecord"]
