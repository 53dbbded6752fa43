"""The embedded signing authority: a Fulcio-like CA, a CT log key and a Rekor-like transparency log.

Public API (used by ``diskci sign``, ``diskci authority`` and the HTTP front ``authority_http``):
``SigningAuthority.init(dir)`` / ``SigningAuthority.open(dir)``, ``issue_certificate()``,
``log_dsse()``, ``trusted_root_json()``. Who may obtain a certificate over HTTP, and for which
identity, is ``authority_http``'s business (a CI job's OIDC ID token); in-process callers are trusted.

It issues the same evidence a public Sigstore deployment does, so sigstore-python's stock ``Verifier``
accepts it given only ``trusted_root.json``:

- root CA (pathlen 1) → intermediate CA (pathlen 0) → short-lived leaf (10 minutes) with an empty
  subject, a critical SAN (the CI identity URI or email), KeyUsage digitalSignature, EKU codeSigning,
  the OIDC issuer as extensions 1.3.6.1.4.1.57264.1.1 (raw bytes) and .1.8 (DER UTF8String), and an
  embedded SCT (RFC 6962 precertificate entry) signed by the CT log key;
- an append-only transparency log (``tlog.TransparencyLog``) giving inclusion proofs, signed
  checkpoints and SETs for DSSE (``dsse`` 0.0.1) entries.

Directory layout (private keys are mode 0600, the directory 0700)::

    authority.json        name, origin, default issuer, creation time
    root.key root.pem intermediate.key intermediate.pem ctlog.key tlog.key
    trusted_root.json     what verifiers need (media type ...trustedroot+json;version=0.1)
    log/entries.jsonl     the transparency log
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from diskci.atomic import atomic_path
from diskci.errors import SupplyChainError
from diskci.mediatypes import SIGSTORE_TRUSTED_ROOT
from diskci.supplychain.policy import OID_ISSUER_V1, OID_ISSUER_V2
from diskci.supplychain.rekor_entries import MalformedEntry, canonical_entry
from diskci.supplychain.tlog import LogEntry, TransparencyLog, key_id

OID_SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
LEAF_LIFETIME = dt.timedelta(minutes=10)
DEFAULT_ISSUER = "https://authority.diskci.invalid"
# The services' names in the trusted root. Verifiers match a checkpoint's signer name against the
# log's baseUrl host, nothing is fetched from them: they stay valid wherever the authority is served.
DEFAULT_URLS = {
    "tlog": "https://log.authority.diskci.invalid",
    "ca": "https://ca.authority.diskci.invalid",
    "ctlog": "https://ct.authority.diskci.invalid",
}

_KEY_FILES = ("root.key", "intermediate.key", "ctlog.key", "tlog.key")


class AuthorityError(SupplyChainError):
    """The signing authority could not be created, opened or could not issue."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o600)
    os.chmod(path, 0o600)


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise AuthorityError(
                f"{path}: private key is readable by others (mode {mode:o})", hint=f"chmod 600 {path}"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise AuthorityError(f"{path}: missing (is this a diskci authority directory?)") from None
    except ValueError as exc:
        raise AuthorityError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthorityError(f"{path}: expected an EC private key")
    return key


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ca_cert(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    pathlen: int,
    not_before: dt.datetime,
    days: int,
) -> x509.Certificate:
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


def _der_utf8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 128:
        return b"\x0c" + bytes([len(raw)]) + raw
    n = len(raw).to_bytes((len(raw).bit_length() + 7) // 8, "big")
    return b"\x0c" + bytes([0x80 | len(n)]) + n + raw


def _der_octets(raw: bytes) -> bytes:
    if len(raw) < 128:
        return b"\x04" + bytes([len(raw)]) + raw
    n = len(raw).to_bytes((len(raw).bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(n)]) + n + raw


class SigningAuthority:
    """An authority directory opened for issuing. Construct with ``init()`` or ``open()``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.config: dict[str, Any] = json.loads((self.directory / "authority.json").read_text())
        except FileNotFoundError:
            raise AuthorityError(
                f"{self.directory}: not a diskci authority directory (no authority.json)",
                hint=f"create one with: diskci authority init {self.directory}",
            ) from None
        self.root_key = _read_key(self.directory / "root.key")
        self.intermediate_key = _read_key(self.directory / "intermediate.key")
        self.ctlog_key = _read_key(self.directory / "ctlog.key")
        self.tlog_key = _read_key(self.directory / "tlog.key")
        self.root_cert = x509.load_pem_x509_certificate((self.directory / "root.pem").read_bytes())
        self.intermediate_cert = x509.load_pem_x509_certificate(
            (self.directory / "intermediate.pem").read_bytes()
        )
        self.urls = {**DEFAULT_URLS, **self.config.get("urls", {})}
        self.log = TransparencyLog(
            self.directory / "log" / "entries.jsonl",
            self.tlog_key,
            origin=self.config["origin"],
            name=urlsplit(self.urls["tlog"]).hostname or self.urls["tlog"],
        )

    # --- creation ------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        name: str = "diskci",
        default_issuer: str = DEFAULT_ISSUER,
        now: dt.datetime | None = None,
    ) -> SigningAuthority:
        """Create keys, CA certificates and ``trusted_root.json`` in a new (or empty) ``directory``."""
        directory = Path(directory)
        if (directory / "authority.json").exists():
            raise AuthorityError(f"{directory}: an authority already exists here; refusing to overwrite it")
        if directory.exists() and any(directory.iterdir()):
            raise AuthorityError(f"{directory}: directory is not empty")
        now = (now or _now()) - dt.timedelta(minutes=5)
        keys = {f: ec.generate_private_key(ec.SECP256R1()) for f in _KEY_FILES}
        with atomic_path(directory, directory=True) as tmp:
            os.chmod(tmp, 0o700)
            for f, k in keys.items():
                _write_key(tmp / f, k)
            root_name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{name} signing root"),
                ]
            )
            inter_name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{name} signing intermediate"),
                ]
            )
            root = _ca_cert(
                subject=root_name,
                key=keys["root.key"],
                issuer_name=root_name,
                issuer_key=keys["root.key"],
                pathlen=1,
                not_before=now,
                days=3650,
            )
            inter = _ca_cert(
                subject=inter_name,
                key=keys["intermediate.key"],
                issuer_name=root_name,
                issuer_key=keys["root.key"],
                pathlen=0,
                not_before=now,
                days=1825,
            )
            (tmp / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
            (tmp / "intermediate.pem").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
            log_id = key_id(keys["tlog.key"].public_key())
            # like Rekor's "rekor.sigstore.dev - <tree ID>"
            log_host = urlsplit(DEFAULT_URLS["tlog"]).hostname
            config = {
                "name": name,
                "origin": f"{log_host} - {int.from_bytes(log_id[:8], 'big') >> 1}",
                "default_issuer": default_issuer,
                "created": now.isoformat(),
            }
            (tmp / "authority.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "log").mkdir(mode=0o700)
            authority = cls(tmp)
            (tmp / "trusted_root.json").write_bytes(authority.trusted_root_json())
        return cls(directory)

    @classmethod
    def open(cls, directory: Path) -> SigningAuthority:
        return cls(directory)

    # --- trusted root --------------------------------------------------------------------------
    def trusted_root(self) -> dict[str, Any]:
        """``dev.sigstore.trustedroot.v1.TrustedRoot`` in its JSON form."""
        start = self.root_cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        b64 = base64.b64encode

        def log_instance(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            pub = key.public_key()
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(_spki(pub)).decode(),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": b64(key_id(pub)).decode()},
            }

        name = self.config["name"]
        return {
            "mediaType": SIGSTORE_TRUSTED_ROOT,
            "tlogs": [log_instance(self.tlog_key, self.urls["tlog"])],
            "certificateAuthorities": [
                {
                    "subject": {"organization": name, "commonName": f"{name} signing intermediate"},
                    "uri": self.urls["ca"],
                    "certChain": {
                        "certificates": [
                            {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER)).decode()}
                            for c in (self.intermediate_cert, self.root_cert)
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [log_instance(self.ctlog_key, self.urls["ctlog"])],
            "timestampAuthorities": [],
        }

    def trusted_root_json(self) -> bytes:
        return (json.dumps(self.trusted_root(), indent=2) + "\n").encode()

    # --- certificates --------------------------------------------------------------------------
    def chain(self) -> list[x509.Certificate]:
        return [self.intermediate_cert, self.root_cert]

    def issue_certificate(
        self,
        key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
        *,
        identity: str,
        issuer: str | None = None,
        now: dt.datetime | None = None,
        extensions: Mapping[ObjectIdentifier, str] | None = None,
    ) -> x509.Certificate:
        """A 10-minute leaf for ``identity`` (a URI, or an email when it contains ``@`` and no ``:``).

        ``key``: the signer's key (in-process signers may pass the private key; only its public half
        is used). ``extensions``: more Fulcio extensions (DER UTF8String values), e.g.
        ``fulcio_claims.ci_extensions(claims)``.
        """
        public_key = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise AuthorityError("the signing key must be an EC (P-256) public key")
        if not identity:
            raise AuthorityError("an identity (SAN URI or email) is required")
        issuer = issuer or self.config["default_issuer"]
        now = (now or _now()).replace(microsecond=0)
        san: x509.GeneralName
        if "@" in identity and ":" not in identity:
            san = x509.RFC822Name(identity)
        else:
            san = x509.UniformResourceIdentifier(identity)
        serial = x509.random_serial_number()

        def build(sct_list: bytes) -> x509.Certificate:
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.intermediate_cert.subject)
                .public_key(public_key)
                .serial_number(serial)
                .not_valid_before(now)
                .not_valid_after(now + LEAF_LIFETIME)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()),
                    critical=False,
                )
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()), critical=False)
                .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V2, _der_utf8(issuer)), critical=False)
            )
            for oid, value in sorted((extensions or {}).items(), key=lambda kv: kv[0].dotted_string):
                b = b.add_extension(x509.UnrecognizedExtension(oid, _der_utf8(value)), critical=False)
            b = b.add_extension(
                x509.UnrecognizedExtension(OID_SCT_LIST, _der_octets(sct_list)), critical=False
            )
            return b.sign(self.intermediate_key, hashes.SHA256())

        timestamp_ms = int(now.timestamp() * 1000)
        # 1. a certificate with a placeholder SCT gives the precertificate TBS (SCT list removed),
        # 2. the CT log key signs the RFC 6962 precert entry over it,
        # 3. the final certificate embeds the real SCT; its precertificate TBS is byte-identical.
        placeholder = self._sct(timestamp_ms, b"\x00" * 70)
        tbs = build(placeholder).tbs_precertificate_bytes
        issuer_key_hash = key_id(self.intermediate_key.public_key())
        signed = struct.pack(">BBQH", 0, 0, timestamp_ms, 1) + issuer_key_hash
        signed += len(tbs).to_bytes(3, "big") + tbs + struct.pack(">H", 0)
        sct_sig = self.ctlog_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return build(self._sct(timestamp_ms, sct_sig))

    def _sct(self, timestamp_ms: int, signature: bytes) -> bytes:
        """A TLS-encoded SignedCertificateTimestampList holding one v1 SCT."""
        log_id = key_id(self.ctlog_key.public_key())
        sct = struct.pack(">B", 0) + log_id + struct.pack(">QH", timestamp_ms, 0)
        sct += struct.pack(">BBH", 4, 3, len(signature)) + signature  # sha256, ecdsa
        item = struct.pack(">H", len(sct)) + sct
        return struct.pack(">H", len(item)) + item

    # --- transparency log ----------------------------------------------------------------------
    @property
    def tree_id(self) -> str:
        """The log's tree ID (the number ending its origin, as Rekor's ``<host> - <tree ID>``)."""
        return str(self.config["origin"]).rsplit(" - ", 1)[-1]

    def log_proposed(self, proposed: Any, *, now: dt.datetime | None = None, unique: bool = True) -> LogEntry:
        """Log a Rekor proposed entry (``rekor_entries``); ``DuplicateEntry`` if ``unique`` and logged."""
        entry = canonical_entry(proposed, issued_by=self._check_issued_here)
        integrated = int((now or _now()).timestamp())
        return self.log.append(
            entry.body, kind=entry.kind, version=entry.version, integrated_time=integrated, unique=unique
        )

    def log_dsse(
        self, envelope: dict[str, Any], certificate: x509.Certificate, *, now: dt.datetime | None = None
    ) -> LogEntry:
        """Log a DSSE envelope (JSON form) signed by ``certificate``'s key as a ``dsse`` 0.0.1 entry."""
        pem_b64 = base64.b64encode(certificate.public_bytes(serialization.Encoding.PEM)).decode()
        proposed = {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {"proposedContent": {"envelope": json.dumps(envelope), "verifiers": [pem_b64]}},
        }
        try:
            return self.log_proposed(proposed, now=now, unique=False)
        except MalformedEntry as exc:
            raise AuthorityError(exc.message) from None

    def _check_issued_here(self, certificate: x509.Certificate) -> None:
        try:
            certificate.verify_directly_issued_by(self.intermediate_cert)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise MalformedEntry(f"the certificate was not issued by this authority: {exc}") from None
