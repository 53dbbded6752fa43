"""The signing authority's keys and their validity windows: ``keys.json`` and key rotation.

Public API: ``KeyRing.load(directory)`` (every key the authority has had: kind, id, validity window,
current or retired; a directory made before ``keys.json`` existed is read from its key files),
``KeyRing.current(kind)`` / ``KeyRing.of_kind(kind)``, ``rotate(directory, kind)`` and
``KIND_LABELS`` / ``ROTATABLE``. ``SigningAuthority`` builds its trusted root from the ring: one
certificate authority per intermediate and one CT log per CT log key, each with its ``validFor``
window, so bundles signed before a rotation keep verifying against the trusted root printed after it.

``keys.json`` is the commit point of a rotation: the new private key is written (0600, fsynced) under
a new name first, then ``keys.json`` is replaced atomically (the old key's window ends, the new one's
starts), then the retired private key is deleted (nothing may be signed with it any more; its public
half and certificate stay in ``keys.json``). A crash leaves either the old ring or the new one.

The transparency log key does not rotate here: a new log key is a new log (a Rekor shard: its own
log ID, tree, origin and checkpoints), and this authority keeps one log; ``rotate`` refuses it and
says so.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from diskci.errors import SupplyChainError, UsageError
from diskci.supplychain.tlog import key_id

__all__ = [
    "KEYS_FILE",
    "KIND_LABELS",
    "ROTATABLE",
    "AuthorityKey",
    "KeyRing",
    "ca_certificate",
    "read_private_key",
    "rotate",
    "write_private_key",
]

KEYS_FILE = "keys.json"
KIND_LABELS = {
    "root": "root CA",
    "intermediate": "intermediate CA",
    "ctlog": "CT log",
    "tlog": "transparency log",
}
ROTATABLE = ("intermediate", "ctlog")
# the files of a directory made before keys.json: (kind, private key, certificate)
LEGACY_FILES = (
    ("root", "root.key", "root.pem"),
    ("intermediate", "intermediate.key", "intermediate.pem"),
    ("ctlog", "ctlog.key", None),
    ("tlog", "tlog.key", None),
)
INTERMEDIATE_DAYS = 1825


def _error(message: str, hint: str | None = None) -> SupplyChainError:
    """A bad key file or ring (``SigningAuthority`` raises it on as its ``AuthorityError``)."""
    return SupplyChainError(message, hint=hint)


def timestamp(when: dt.datetime) -> str:
    """RFC 3339, whole seconds, UTC (the trusted root's ``validFor`` form)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _ceil_second(when: dt.datetime) -> dt.datetime:
    """``when`` rounded up to a whole second: a window ending there covers everything signed before."""
    whole = math.ceil(when.timestamp())
    return dt.datetime.fromtimestamp(whole, dt.UTC)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """``key`` as PKCS#8 PEM in ``path``, mode 0600, fsynced before it appears under its name."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_durably(path, pem, mode=0o600)


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise _error(
                f"{path}: private key is readable by others (mode {mode:o})", hint=f"chmod 600 {path}"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise _error(f"{path}: missing (is this a diskci authority directory?)") from None
    except ValueError as exc:
        raise _error(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _error(f"{path}: expected an EC private key")
    return key


def _write_durably(path: Path, data: bytes, *, mode: int) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    os.replace(name, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ca_certificate(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    pathlen: int,
    not_before: dt.datetime,
    days: int,
) -> x509.Certificate:
    """A CA certificate in the Web PKI profile sigstore verifiers require (critical basicConstraints,
    keyCertSign, SKI and AKI key IDs)."""
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return b.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class AuthorityKey:
    """One key of the authority. ``key_file``: its private key's file (current keys only);
    ``certificate``: DER, for the CAs; ``end``: None while it is the current key of its kind."""

    kind: str
    key_id: str  # hex SHA-256 of the DER SubjectPublicKeyInfo (for the logs: their log ID)
    public_key: bytes  # DER SubjectPublicKeyInfo
    start: dt.datetime
    end: dt.datetime | None = None
    certificate: bytes | None = None
    key_file: str | None = None

    @property
    def current(self) -> bool:
        return self.end is None

    def public(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_der_public_key(self.public_key)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    def cert(self) -> x509.Certificate:
        if self.certificate is None:
            raise _error(f"the {KIND_LABELS[self.kind]} key {self.key_id[:16]} has no certificate")
        return x509.load_der_x509_certificate(self.certificate)

    def valid_for(self) -> dict[str, str]:
        window = {"start": timestamp(self.start)}
        if self.end is not None:
            window["end"] = timestamp(self.end)
        return window

    def to_json(self) -> dict[str, Any]:
        b64 = base64.b64encode
        return {
            "kind": self.kind,
            "id": self.key_id,
            "start": timestamp(self.start),
            "end": None if self.end is None else timestamp(self.end),
            "public_key": b64(self.public_key).decode(),
            "certificate": None if self.certificate is None else b64(self.certificate).decode(),
            "key_file": self.key_file,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuthorityKey:
        d = base64.b64decode
        kind = str(data["kind"])
        if kind not in KIND_LABELS:
            raise ValueError(f"unknown key kind {kind!r}")
        return cls(
            kind=kind,
            key_id=str(data["id"]),
            public_key=d(data["public_key"]),
            start=parse_timestamp(str(data["start"])),
            end=None if data.get("end") is None else parse_timestamp(str(data["end"])),
            certificate=None if data.get("certificate") is None else d(data["certificate"]),
            key_file=None if data.get("key_file") is None else str(data["key_file"]),
        )

    @classmethod
    def of(
        cls,
        kind: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        start: dt.datetime,
        key_file: str,
        certificate: x509.Certificate | None = None,
    ) -> AuthorityKey:
        pub = key.public_key()
        spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        der = None if certificate is None else certificate.public_bytes(serialization.Encoding.DER)
        return cls(
            kind=kind,
            key_id=key_id(pub).hex(),
            public_key=spki,
            start=start,
            certificate=der,
            key_file=key_file,
        )


@dataclass(frozen=True)
class KeyRing:
    """Every key the authority has had, oldest first within a kind."""

    directory: Path
    keys: tuple[AuthorityKey, ...]

    @classmethod
    def load(cls, directory: Path) -> KeyRing:
        directory = Path(directory)
        path = directory / KEYS_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls._legacy(directory)
        except ValueError as exc:
            raise _error(f"{path}: not JSON: {exc}") from None
        try:
            keys = tuple(AuthorityKey.from_json(k) for k in data["keys"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _error(f"{path}: not a key ring: {exc}") from None
        ring = cls(directory, keys)
        for kind in KIND_LABELS:
            ring.current(kind)  # exactly one current key of each kind
        return ring

    @classmethod
    def _legacy(cls, directory: Path) -> KeyRing:
        """The ring of a directory made before ``keys.json``: one current key of each kind, valid
        from the root certificate's start (what its trusted root said)."""
        try:
            root_cert = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
        except FileNotFoundError:
            raise _error(f"{directory}: not a diskci authority directory (no root.pem)") from None
        start = root_cert.not_valid_before_utc
        keys = []
        for kind, key_file, cert_file in LEGACY_FILES:
            key = read_private_key(directory / key_file)
            cert = None
            if cert_file is not None:
                cert = x509.load_pem_x509_certificate((directory / cert_file).read_bytes())
            keys.append(AuthorityKey.of(kind, key, start=start, key_file=key_file, certificate=cert))
        return cls(directory, tuple(keys))

    def save(self) -> None:
        data = {"keys": [k.to_json() for k in self.keys]}
        _write_durably(self.directory / KEYS_FILE, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)

    def of_kind(self, kind: str) -> list[AuthorityKey]:
        return [k for k in self.keys if k.kind == kind]

    def current(self, kind: str) -> AuthorityKey:
        current = [k for k in self.of_kind(kind) if k.current]
        if len(current) != 1:
            raise _error(
                f"{self.directory / KEYS_FILE}: {len(current)} current {KIND_LABELS[kind]} keys, "
                "expected exactly one"
            )
        return current[0]

    def private_key(self, kind: str) -> ec.EllipticCurvePrivateKey:
        entry = self.current(kind)
        if entry.key_file is None:
            raise _error(f"{self.directory / KEYS_FILE}: the current {KIND_LABELS[kind]} key has no key file")
        key = read_private_key(self.directory / entry.key_file)
        if key_id(key.public_key()).hex() != entry.key_id:
            raise _error(
                f"{self.directory / entry.key_file}: not the {KIND_LABELS[kind]} key {entry.key_id[:16]} "
                f"that {KEYS_FILE} names"
            )
        return key


@contextlib.contextmanager
def _rotation_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".keys.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rotate(
    directory: Path, kind: str, *, now: dt.datetime | None = None
) -> tuple[AuthorityKey, AuthorityKey]:
    """A new ``kind`` key (an intermediate CA certified by the root, or a CT log key); the old one's
    window ends now and it stays in the ring (and the trusted root). Returns (retired, new)."""
    if kind == "tlog":
        raise UsageError(
            "the transparency log key is not rotated: a new log key means a new log (a Rekor shard "
            "with its own log ID, tree and checkpoints), and this authority keeps one log",
            hint="to retire the log, create a new authority (diskci authority init) and trust both roots",
        )
    if kind not in ROTATABLE:
        raise UsageError(
            f"cannot rotate {kind!r}: rotatable keys are {', '.join(ROTATABLE)}",
            hint="the root CA is the trust anchor; replacing it is a new authority",
        )
    directory = Path(directory)
    now = now or dt.datetime.now(dt.UTC)
    with _rotation_lock(directory):
        ring = KeyRing.load(directory)
        old = ring.current(kind)
        key = ec.generate_private_key(ec.SECP256R1())
        new_id = key_id(key.public_key()).hex()
        key_file = f"{kind}-{new_id[:16]}.key"
        cert = None
        start = now.replace(microsecond=0)
        if kind == "intermediate":
            root = ring.current("root").cert()
            generation = len(ring.of_kind("intermediate")) + 1
            organization = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
            name = str(organization[0].value) if organization else "diskci"
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{name} signing intermediate {generation}"),
                ]
            )
            cert = ca_certificate(
                subject=subject,
                key=key,
                issuer_name=root.subject,
                issuer_key=ring.private_key("root"),
                pathlen=0,
                not_before=start - dt.timedelta(minutes=5),
                days=INTERMEDIATE_DAYS,
            )
        write_private_key(directory / key_file, key)
        new = AuthorityKey.of(kind, key, start=start, key_file=key_file, certificate=cert)
        retired = replace(old, end=_ceil_second(now), key_file=None)
        keys = (*(retired if k is old else k for k in ring.keys), new)
        KeyRing(directory, keys).save()  # the commit point
        if old.key_file is not None:
            with contextlib.suppress(FileNotFoundError):
                (directory / old.key_file).unlink()
    return retired, new
