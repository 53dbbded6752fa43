"""Sign publications as sigstore bundles and verify one bundle with sigstore-python.

Public API: ``sign_publication(build_dir, authority=..., identity=...)``, ``sign_statement(...)``,
``verify_bundle(bundle, subject_digest=..., policy=..., trusted_root=...) -> BundleVerification``,
``load_trusted_root(path)``, ``IdentityPolicy``. A whole publication is verified by
``diskci.supplychain.verifier`` (which calls ``verify_bundle`` for each of its bundles).

Bundles are v0.3 (``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a DSSE envelope of an
in-toto v1 statement, exactly as cosign v3 writes them: one over the OCI index digest (predicate
``https://sigstore.dev/cosign/sign/v1``) and one SLSA provenance v1 statement. So a bundle made by a
public Sigstore deployment verifies through the same path.

Every bundle verification failure is ``VerificationFailed(reason, message)`` with one of:
``bundle_malformed``, ``unknown_ca``, ``certificate_expired``, ``issuer_mismatch``,
``identity_mismatch``, ``signature_invalid`` (bad signature, or a signature for another artifact),
``tlog_invalid``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError
from sigstore.models import Bundle, ClientTrustConfig, InvalidBundle, TrustedRoot
from sigstore.verify import Verifier

from diskci import mediatypes as mt
from diskci.atomic import write_bytes
from diskci.canonical import canonical_json
from diskci.errors import UsageError, VerificationFailed
from diskci.registry.publication import (
    PROVENANCE_BUNDLE,
    PUBLICATION_BUNDLE,
    SIGNATURES_DIR,
    Publication,
    bundle_files,
    plan_publication,
    statement_subjects,
)
from diskci.supplychain.policy import (
    IdentityPolicy,
    PolicyMismatch,
    certificate_identities,
    certificate_issuer,
)
from diskci.supplychain.tlog import LogEntry

__all__ = [
    "BundleVerification",
    "IdentityPolicy",
    "SignResult",
    "SigningBackend",
    "Source",
    "StatementSigner",
    "load_trusted_root",
    "sign_publication",
    "sign_statement",
    "verify_bundle",
]

IN_TOTO_PAYLOAD_TYPE = mt.IN_TOTO_PAYLOAD_TYPE
BUILD_TYPE = mt.SLSA_BUILD_TYPE


class SigningBackend(Protocol):
    """An authority: ``SigningAuthority`` in-process, or ``AuthorityClient`` over HTTP."""

    def issue_certificate(
        self, key: ec.EllipticCurvePrivateKey, *, identity: str, issuer: str | None = None
    ) -> x509.Certificate: ...

    def log_dsse(self, envelope: dict[str, Any], certificate: x509.Certificate) -> LogEntry: ...


@runtime_checkable
class StatementSigner(Protocol):
    """A signer that makes whole bundles: ``sigstore_signer.SigstoreSigner`` (sigstore-python's
    signer against a Fulcio and a Rekor). ``identity`` is the SAN its certificates name."""

    identity: str

    def sign_in_toto(self, statement: dict[str, Any]) -> tuple[bytes, int]: ...


@dataclass(frozen=True)
class Source:
    """Where the build's inputs came from (recorded in the provenance)."""

    repo: str = ""
    ref: str = ""
    commit: str = ""


@dataclass
class SignResult:
    index_digest: str
    identity: str
    bundles: list[Path] = field(default_factory=list)
    log_indexes: list[int] = field(default_factory=list)


# --- signing ------------------------------------------------------------------------------------
def _pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(body), body)


def sign_statement(
    statement: dict[str, Any], *, authority: SigningBackend, identity: str, issuer: str | None = None
) -> tuple[bytes, LogEntry]:
    """Sign ``statement`` with a fresh key certified for ``identity``; returns (bundle JSON, log entry)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority.issue_certificate(key, identity=identity, issuer=issuer)
    payload = canonical_json(statement, ascii_only=True)
    sig = key.sign(_pae(IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": IN_TOTO_PAYLOAD_TYPE,
        "signatures": [{"sig": base64.b64encode(sig).decode()}],
    }
    entry = authority.log_dsse(envelope, cert)
    from cryptography.hazmat.primitives.serialization import Encoding

    bundle = {
        "mediaType": mt.SIGSTORE_BUNDLE_V03,
        "verificationMaterial": {
            "certificate": {"rawBytes": base64.b64encode(cert.public_bytes(Encoding.DER)).decode()},
            "tlogEntries": [entry.to_bundle_json()],
        },
        "dsseEnvelope": envelope,
    }
    data = (json.dumps(bundle, indent=2) + "\n").encode()
    try:
        Bundle.from_json(data)
    except (InvalidBundle, ValueError) as exc:  # our own output: a bug, not bad input
        raise VerificationFailed("bundle_malformed", f"the bundle just made does not load: {exc}") from exc
    return data, entry


def index_statement(pub: Publication) -> dict[str, Any]:
    return {
        "_type": mt.IN_TOTO_STATEMENT_V1,
        "subject": [
            {
                "name": f"{pub.build.platform}:{pub.build.version}",
                "digest": {"sha256": pub.index_desc.digest[7:]},
            }
        ],
        "predicateType": mt.COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }


def provenance_statement(pub: Publication, *, identity: str, source: Source, run_id: str) -> dict[str, Any]:
    """SLSA provenance v1 for the publication index."""
    build = pub.build
    deps: list[dict[str, Any]] = [
        {"name": "platform-spec", "digest": {"sha256": build.spec_digest.removeprefix("sha256:")}}
    ]
    for arch in sorted(build.architectures):
        for a in build.architectures[arch].artifacts:
            if a.media_type == mt.PACKAGES_JSON:
                deps.append({"name": f"{arch}/package-list", "digest": {"sha256": a.sha256}})
    if source.repo:
        dep: dict[str, Any] = {
            "uri": f"git+{source.repo}@{source.ref}" if source.ref else f"git+{source.repo}"
        }
        if source.commit:
            dep["digest"] = {"gitCommit": source.commit}
        deps.append(dep)
    return {
        "_type": mt.IN_TOTO_STATEMENT_V1,
        "subject": [
            {"name": f"{build.platform}:{build.version}", "digest": {"sha256": pub.index_desc.digest[7:]}}
        ],
        "predicateType": mt.SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "platform": build.platform,
                    "version": build.version,
                    "source": {"repo": source.repo, "ref": source.ref, "commit": source.commit},
                },
                "internalParameters": {
                    "SOURCE_DATE_EPOCH": build.source_date_epoch,
                    "spec_digest": build.spec_digest,
                    "architectures": sorted(build.architectures),
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": identity, "version": {"diskci": build.diskci_version}},
                "metadata": {"invocationId": run_id},
            },
        },
    }


def sign_publication(
    build_dir: Path,
    *,
    authority: SigningBackend | StatementSigner,
    identity: str,
    issuer: str | None = None,
    source: Source | None = None,
    run_id: str = "",
    planned: Publication | None = None,
) -> SignResult:
    """Sign ``build_dir``'s index digest and its provenance; writes ``signatures/*.sigstore.json``.

    ``planned``: the publication to sign when it is not ``plan_publication(build_dir)`` (one assembled
    from parts in a registry; ``build_dir`` then only receives the signatures)."""
    pub = planned or plan_publication(build_dir)
    result = SignResult(index_digest=pub.index_desc.digest, identity=identity)
    statements = (
        (PUBLICATION_BUNDLE, index_statement(pub)),
        (
            PROVENANCE_BUNDLE,
            provenance_statement(pub, identity=identity, source=source or Source(), run_id=run_id),
        ),
    )
    out_dir = Path(build_dir) / SIGNATURES_DIR
    for old in bundle_files(build_dir):
        old.unlink()
    for name, statement in statements:
        if isinstance(authority, StatementSigner):
            data, log_index = authority.sign_in_toto(statement)
        else:
            data, entry = sign_statement(statement, authority=authority, identity=identity, issuer=issuer)
            log_index = entry.log_index
        write_bytes(out_dir / name, data)
        result.bundles.append(out_dir / name)
        result.log_indexes.append(log_index)
    return result


# --- verification -------------------------------------------------------------------------------
@dataclass
class BundleVerification:
    predicate_type: str
    identity: str
    issuer: str
    log_index: int
    integrated_time: int
    subjects: list[str]
    source: str = ""


def load_trusted_root(path: Path | None = None) -> TrustedRoot:
    """``path``'s trusted root, or Sigstore's public one (from sigstore-python's offline TUF cache)."""
    if path is None:
        try:
            return ClientTrustConfig.production(offline=True).trusted_root
        except (SigstoreError, OSError, ValueError) as exc:
            raise UsageError(f"Sigstore's public trusted root is not available offline: {exc}") from None
    try:
        return TrustedRoot.from_file(str(path))
    except FileNotFoundError:
        raise UsageError(f"{path}: trusted root file not found") from None
    except (SigstoreError, ValueError) as exc:
        raise UsageError(f"{path}: not a sigstore trusted root: {exc}") from None


def _fail(reason: str, message: str) -> VerificationFailed:
    return VerificationFailed(reason, message)


def verify_bundle(
    bundle: bytes,
    *,
    subject_digest: str,
    policy: IdentityPolicy,
    trusted_root: TrustedRoot,
    name: str = "bundle",
) -> BundleVerification:
    """Verify one bundle for ``subject_digest``; raises ``VerificationFailed`` with a reason."""
    # 1. it parses as a v0.x bundle with one DSSE envelope, one log entry and a leaf certificate
    try:
        raw = json.loads(bundle)
        parsed = Bundle.from_json(bundle)
        entry_json = raw["verificationMaterial"]["tlogEntries"][0]
        integrated = int(entry_json["integratedTime"])
        log_index = int(entry_json["logIndex"])
        envelope = raw["dsseEnvelope"]
    except (InvalidBundle, ValueError, KeyError, TypeError, IndexError) as exc:
        raise _fail("bundle_malformed", f"{name}: not a valid sigstore bundle: {exc}") from None
    if envelope.get("payloadType") != IN_TOTO_PAYLOAD_TYPE:
        raise _fail("bundle_malformed", f"{name}: DSSE payload type is {envelope.get('payloadType')!r}")
    cert = parsed.signing_certificate

    # 2. the leaf was issued by a CA of the trusted root
    cas = trusted_root.get_fulcio_certs()
    if not any(_issued_by(cert, ca) for ca in cas):
        raise _fail(
            "unknown_ca", f"{name}: certificate issuer {cert.issuer.rfc4514_string()!r} is not trusted"
        )

    # 3. it was used (logged) inside its validity window
    when = dt.datetime.fromtimestamp(integrated, dt.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise _fail(
            "certificate_expired",
            f"{name}: signed (logged) at {when:%Y-%m-%d %H:%M:%S}Z, outside the certificate's validity "
            f"{cert.not_valid_before_utc:%H:%M:%S}–{cert.not_valid_after_utc:%H:%M:%S}Z",
        )

    # 4. sigstore-python's verifier: chain, SCT, policy, inclusion proof, checkpoint, SET, DSSE signature
    try:
        payload_type, payload = Verifier(trusted_root=trusted_root).verify_dsse(parsed, policy)
    except PolicyMismatch as exc:
        raise _fail(exc.reason, f"{name}: {exc}") from None
    except VerificationError as exc:
        text = str(exc)
        if any(k in text for k in ("log entry", "inclusion", "checkpoint", "SET", "SCT")):
            raise _fail("tlog_invalid", f"{name}: {text}") from None
        raise _fail("signature_invalid", f"{name}: {text}") from None
    except (InvalidSignature, ValueError) as exc:
        raise _fail("signature_invalid", f"{name}: {exc}") from None
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise _fail("bundle_malformed", f"{name}: DSSE payload type is {payload_type!r}")

    # 5. the signed statement is about this publication (not moved from another artifact)
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise _fail("bundle_malformed", f"{name}: signed payload is not JSON: {exc}") from None
    subjects = statement_subjects(statement)
    if subject_digest not in subjects:
        raise _fail(
            "signature_invalid",
            f"{name}: the signature is for {', '.join(subjects) or 'nothing'}, not {subject_digest} "
            "(a signature moved from another artifact)",
        )
    return BundleVerification(
        predicate_type=str(statement.get("predicateType", "")),
        identity=", ".join(certificate_identities(cert)),
        issuer=certificate_issuer(cert) or "",
        log_index=log_index,
        integrated_time=integrated,
        subjects=subjects,
        source=name,
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
