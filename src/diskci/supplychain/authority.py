"""The embedded signing authority: a Fulcio-like CA, a CT log key and a Rekor-like transparency log.

Public API (used by ``diskci sign``, ``diskci authority`` and the HTTP front ``authority_http``):
``SigningAuthority.init(dir)`` / ``SigningAuthority.open(dir)``, ``issue_certificate()``,
``log_dsse()``, ``trusted_root_json()``, ``keys()`` (the keys in use: re-read after a rotation),
``rotate_key(kind)``. Who may obtain a certificate over HTTP, and for which
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
    keys.json             every key it has had, with its validity window (``authority_keys``);
                          a rotated-in key is <kind>-<id>.key, a retired one has no private key left
    trusted_root.json     what verifiers need (media type ...trustedroot+json;version=0.1)
    log/entries.jsonl     the transparency log
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from diskci.atomic import atomic_path
from diskci.atomic import write_bytes as atomic_write_bytes
from diskci.errors import SupplyChainError
from diskci.mediatypes import SIGSTORE_TRUSTED_ROOT
from diskci.supplychain.authority_keys import (
    KEYS_FILE,
    LEGACY_FILES,
    AuthorityKey,
    KeyRing,
    ca_certificate,
    rotate,
    write_private_key,
)
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


class AuthorityError(SupplyChainError):
    """The signing authority could not be created, opened or could not issue."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def _as_authority_error() -> Iterator[None]:
    """``authority_keys``' errors about the key files, raised as this authority's."""
    try:
        yield
    except AuthorityError:
        raise
    except SupplyChainError as exc:
        raise AuthorityError(exc.message, hint=exc.hint) from None


@dataclass(frozen=True)
class _Keys:
    """The keys in use, read together from one version of the key ring (a rotation swaps them whole)."""

    ring: KeyRing
    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate_cert: x509.Certificate
    ctlog_key: ec.EllipticCurvePrivateKey
    tlog_key: ec.EllipticCurvePrivateKey
    intermediates: tuple[x509.Certificate, ...]  # every intermediate the ring has had

    @classmethod
    def load(cls, directory: Path) -> _Keys:
        with _as_authority_error():
            return cls._load(directory)

    @classmethod
    def _load(cls, directory: Path) -> _Keys:
        ring = KeyRing.load(directory)
        return cls(
            ring=ring,
            root_key=ring.private_key("root"),
            root_cert=ring.current("root").cert(),
            intermediate_key=ring.private_key("intermediate"),
            intermediate_cert=ring.current("intermediate").cert(),
            ctlog_key=ring.private_key("ctlog"),
            tlog_key=ring.private_key("tlog"),
            intermediates=tuple(k.cert() for k in ring.of_kind("intermediate")),
        )


def _name_attribute(cert: x509.Certificate, oid: ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _sct(ctlog_key: ec.EllipticCurvePrivateKey, timestamp_ms: int, signature: bytes) -> bytes:
    """A TLS-encoded SignedCertificateTimestampList holding one v1 SCT of ``ctlog_key``'s log."""
    log_id = key_id(ctlog_key.public_key())
    sct = struct.pack(">B", 0) + log_id + struct.pack(">QH", timestamp_ms, 0)
    sct += struct.pack(">BBH", 4, 3, len(signature)) + signature  # sha256, ecdsa
    item = struct.pack(">H", len(sct)) + sct
    return struct.pack(">H", len(item)) + item


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
        self._keys_stamp = self._ring_stamp()
        self._keys = _Keys.load(self.directory)
        self.urls = {**DEFAULT_URLS, **self.config.get("urls", {})}
        self.log = TransparencyLog(
            self.directory / "log" / "entries.jsonl",
            self._keys.tlog_key,
            origin=self.config["origin"],
            name=urlsplit(self.urls["tlog"]).hostname or self.urls["tlog"],
        )

    # --- keys ------------------------------------------------------------------------------------
    def _ring_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = (self.directory / KEYS_FILE).stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def keys(self) -> _Keys:
        """The keys in use now: re-read when ``keys.json`` changed (a ``diskci authority keys
        rotate`` is picked up by a running ``authority serve`` at its next request)."""
        stamp = self._ring_stamp()
        if stamp != self._keys_stamp:
            keys = _Keys.load(self.directory)
            if key_id(keys.tlog_key.public_key()) != self.log.log_id:
                raise AuthorityError(
                    f"{self.directory}: the transparency log key changed under a running authority"
                )
            self._keys, self._keys_stamp = keys, stamp
        return self._keys

    @property
    def ring(self) -> KeyRing:
        return self.keys().ring

    @property
    def root_cert(self) -> x509.Certificate:
        return self.keys().root_cert

    @property
    def intermediate_cert(self) -> x509.Certificate:
        return self.keys().intermediate_cert

    @property
    def intermediate_key(self) -> ec.EllipticCurvePrivateKey:
        return self.keys().intermediate_key

    @property
    def ctlog_key(self) -> ec.EllipticCurvePrivateKey:
        return self.keys().ctlog_key

    @property
    def tlog_key(self) -> ec.EllipticCurvePrivateKey:
        return self.keys().tlog_key

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
        keys = {f: ec.generate_private_key(ec.SECP256R1()) for _, f, _ in LEGACY_FILES}
        with atomic_path(directory, directory=True) as tmp:
            os.chmod(tmp, 0o700)
            for f, k in keys.items():
                write_private_key(tmp / f, k)
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
            root = ca_certificate(
                subject=root_name,
                key=keys["root.key"],
                issuer_name=root_name,
                issuer_key=keys["root.key"],
                pathlen=1,
                not_before=now,
                days=3650,
            )
            inter = ca_certificate(
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
            certs = {"root.key": root, "intermediate.key": inter}
            ring = [
                AuthorityKey.of(kind, keys[f], start=now, key_file=f, certificate=certs.get(f))
                for kind, f, _ in LEGACY_FILES
            ]
            KeyRing(tmp, tuple(ring)).save()
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
        """``dev.sigstore.trustedroot.v1.TrustedRoot`` in its JSON form: every intermediate CA and
        CT log key the authority has had, each with its ``validFor`` window (retired ones end)."""
        ring = self.ring
        root = ring.current("root").cert()
        b64 = base64.b64encode

        def log_instance(key: AuthorityKey, url: str) -> dict[str, Any]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(key.public_key).decode(),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": key.valid_for(),
                },
                "logId": {"keyId": b64(bytes.fromhex(key.key_id)).decode()},
            }

        def authority(key: AuthorityKey) -> dict[str, Any]:
            cert = key.cert()
            return {
                "subject": {
                    "organization": _name_attribute(cert, NameOID.ORGANIZATION_NAME),
                    "commonName": _name_attribute(cert, NameOID.COMMON_NAME),
                },
                "uri": self.urls["ca"],
                "certChain": {
                    "certificates": [
                        {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER)).decode()}
                        for c in (cert, root)
                    ]
                },
                "validFor": key.valid_for(),
            }

        return {
            "mediaType": SIGSTORE_TRUSTED_ROOT,
            "tlogs": [log_instance(k, self.urls["tlog"]) for k in ring.of_kind("tlog")],
            "certificateAuthorities": [authority(k) for k in ring.of_kind("intermediate")],
            "ctlogs": [log_instance(k, self.urls["ctlog"]) for k in ring.of_kind("ctlog")],
            "timestampAuthorities": [],
        }

    def trusted_root_json(self) -> bytes:
        return (json.dumps(self.trusted_root(), indent=2) + "\n").encode()

    def rotate_key(self, kind: str, *, now: dt.datetime | None = None) -> tuple[AuthorityKey, AuthorityKey]:
        """``authority_keys.rotate`` then ``trusted_root.json`` rewritten to list both keys' windows.
        Returns (retired, new)."""
        with _as_authority_error():
            retired, new = rotate(self.directory, kind, now=now)
        atomic_write_bytes(self.directory / "trusted_root.json", self.trusted_root_json())
        return retired, new

    # --- certificates --------------------------------------------------------------------------
    def chain(self) -> list[x509.Certificate]:
        keys = self.keys()
        return [keys.intermediate_cert, keys.root_cert]

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
        keys = self.keys()  # one version of the ring for the whole certificate

        def build(sct_list: bytes) -> x509.Certificate:
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(keys.intermediate_cert.subject)
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
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(keys.intermediate_key.public_key()),
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
            return b.sign(keys.intermediate_key, hashes.SHA256())

        timestamp_ms = int(now.timestamp() * 1000)
        # 1. a certificate with a placeholder SCT gives the precertificate TBS (SCT list removed),
        # 2. the CT log key signs the RFC 6962 precert entry over it,
        # 3. the final certificate embeds the real SCT; its precertificate TBS is byte-identical.
        placeholder = _sct(keys.ctlog_key, timestamp_ms, b"\x00" * 70)
        tbs = build(placeholder).tbs_precertificate_bytes
        issuer_key_hash = key_id(keys.intermediate_key.public_key())
        signed = struct.pack(">BBQH", 0, 0, timestamp_ms, 1) + issuer_key_hash
        signed += len(tbs).to_bytes(3, "big") + tbs + struct.pack(">H", 0)
        sct_sig = keys.ctlog_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return build(_sct(keys.ctlog_key, timestamp_ms, sct_sig))

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
        """Issued by an intermediate of this authority (a retired one too: a certificate issued
        just before a rotation is logged just after it)."""
        problems = []
        for ca in self.keys().intermediates:
            try:
                certificate.verify_directly_issued_by(ca)
                return
            except (InvalidSignature, ValueError, TypeError) as exc:
                problems.append(str(exc) or type(exc).__name__)
        raise MalformedEntry(f"the certificate was not issued by this authority: {problems[-1]}")
