"""The fleet's Secure Boot key pair: files named by the settings, never rows in the database.

``db.key`` (RSA-2048 private key, PEM, mode 0600) and ``db.crt`` (its self-signed X.509 certificate,
PEM) under ``<state_dir>/secureboot/`` unless ``secureboot_key_file``/``secureboot_cert_file`` say
otherwise. RSA-2048 with SHA-256 is what every UEFI implementation must accept for db entries.
``rotate`` moves the current pair to ``retired/<fingerprint>.{key,crt}`` and makes a new one; retired
certificates can still be exported (for a transition where both are enrolled) until removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from diskci.errors import NotFound, UsageError
from diskci.platform.settings import PlatformSettings
from diskci.platform.statefiles import private_dir, private_file

DIRECTORY = "secureboot"
KEY_NAME = "db.key"
CERT_NAME = "db.crt"
RETIRED = "retired"


class NoSigningKey(NotFound):
    """The fleet has no Secure Boot key yet (``diskci platform secureboot rotate`` makes one)."""


@dataclass(frozen=True)
class Certificate:
    """One certificate of the fleet key (current or retired)."""

    pem: bytes
    path: Path
    current: bool

    @property
    def x509(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem)

    @property
    def der(self) -> bytes:
        return self.x509.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex."""
        return hashlib.sha256(self.der).hexdigest()

    def describe(self) -> dict[str, object]:
        cert = self.x509
        return {
            "subject": cert.subject.rfc4514_string(),
            "sha256_fingerprint": self.fingerprint,
            "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "key": f"RSA-{cert.public_key().key_size}",  # type: ignore[union-attr]
            "current": self.current,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class FleetKey:
    """Where the fleet key's files are (from ``PlatformSettings``)."""

    key_file: Path
    cert_file: Path

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> FleetKey:
        base = settings.state_dir / DIRECTORY
        key = settings.secureboot_key_file or base / KEY_NAME
        cert = settings.secureboot_cert_file or base / CERT_NAME
        return cls(Path(key).expanduser(), Path(cert).expanduser())

    @property
    def retired_dir(self) -> Path:
        return self.cert_file.parent / RETIRED

    def exists(self) -> bool:
        return self.key_file.is_file() and self.cert_file.is_file()

    def certificate(self) -> Certificate:
        if not self.exists():
            raise NoSigningKey(
                f"no Secure Boot key: {self.key_file} and {self.cert_file} do not both exist",
                hint="Create one with: diskci platform secureboot rotate",
            )
        try:
            pem = self.cert_file.read_bytes()
            x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise UsageError(f"{self.cert_file}: not a PEM X.509 certificate: {exc}") from None
        return Certificate(pem, self.cert_file, current=True)

    def retired(self) -> list[Certificate]:
        if not self.retired_dir.is_dir():
            return []
        return [Certificate(p.read_bytes(), p, current=False) for p in sorted(self.retired_dir.glob("*.crt"))]

    def rotate(self, *, common_name: str = "diskci fleet Secure Boot key") -> Certificate:
        """A new key pair (the current one, if any, retired first); returns the new certificate."""
        if self.exists():
            old = self.certificate()
            private_dir(self.retired_dir)
            stem = self.retired_dir / old.fingerprint[:16]
            shutil.move(self.key_file, stem.with_suffix(".key"))
            shutil.move(self.cert_file, stem.with_suffix(".crt"))
        elif self.key_file.exists() or self.cert_file.exists():
            raise UsageError(
                f"only one of {self.key_file} and {self.cert_file} exists: restore the other or remove it"
            )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {now:%Y-%m-%d}"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "diskci"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=20 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .sign(key, hashes.SHA256())
        )
        private_dir(self.key_file.parent)
        private_dir(self.cert_file.parent)
        fd = private_file(self.key_file, exclusive=True)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self.certificate()
