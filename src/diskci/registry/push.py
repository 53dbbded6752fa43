"""``diskci push``: publish a build directory to a registry or OCI layout.

Public API: ``push_publication(build_dir, ref, arch=None) -> PushResult`` (``arch``: one
architecture's part, for a CI job); ``push_planned(pub, ref, bundles=...)`` pushes an already planned
publication (``diskci.registry.assemble`` plans one from parts in the registry).

Order: blobs (skipped when the registry has them: a re-run resumes), child manifests, the index
(tagged with the version), then each sigstore bundle in ``signatures/`` as an OCI 1.1 referrer of the
index (artifactType ``application/vnd.dev.sigstore.bundle.v0.3+json``, as cosign v3 stores them). All
manifests are canonical JSON, so pushing the same build twice gives the same digests, and a referrer
already listed is not listed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from diskci import mediatypes as mt
from diskci.canonical import canonical_json
from diskci.errors import UsageError
from diskci.registry import open_registry
from diskci.registry.publication import (
    ANNOTATION_BUNDLE_CONTENT,
    ANNOTATION_BUNDLE_PREDICATE,
    PlannedBlob,
    Publication,
    arch_tag,
    bundle_files,
    bundle_statement,
    plan_publication,
    statement_subjects,
)
from diskci.registry.reference import Reference
from diskci.registry.store import BlobSource, Descriptor, RegistryClient

log = logging.getLogger("diskci.registry")
EMPTY_JSON = b"{}"


@dataclass
class PushResult:
    reference: str
    digest: str
    tag: str
    blobs_sent: int = 0
    blobs_skipped: int = 0
    bytes_sent: int = 0
    manifests: list[str] = field(default_factory=list)
    referrers: list[str] = field(default_factory=list)


def bundle_referrer(bundle: bytes, subject: Descriptor, predicate_type: str) -> tuple[bytes, Descriptor]:
    """The referrer manifest carrying ``bundle`` for ``subject``, and the bundle's layer descriptor."""
    layer = Descriptor.for_bytes(mt.SIGSTORE_BUNDLE_V03, bundle)
    empty = Descriptor.for_bytes(mt.OCI_EMPTY, EMPTY_JSON)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": mt.SIGSTORE_BUNDLE_V03,
        "config": empty.to_json(),
        "layers": [layer.to_json()],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
        "annotations": {
            ANNOTATION_BUNDLE_CONTENT: "dsse-envelope",
            ANNOTATION_BUNDLE_PREDICATE: predicate_type,
        },
    }
    return canonical_json(manifest), layer


def push_publication(
    build_dir: Path,
    ref: Reference | str,
    *,
    arch: str | None = None,
    client: RegistryClient | None = None,
    progress: Callable[[str], None] | None = None,
    parallel: int = 3,
) -> PushResult:
    """Push ``build_dir`` to ``ref`` (its tag defaults to the build's version), ``parallel`` blobs at once.

    ``arch``: push only that architecture's part, tagged ``arch_tag(tag, arch)`` and without
    signatures (they sign the whole publication); ``diskci.registry.assemble`` joins the parts.
    """
    ref = Reference.parse(ref) if isinstance(ref, str) else ref
    if arch is None:
        pub = plan_publication(build_dir)
        return push_planned(
            pub, ref, bundles=signature_bundles(pub), client=client, progress=progress, parallel=parallel
        )
    pub = plan_publication(build_dir, arches=[arch])
    if ref.digest:
        raise UsageError(f"{ref}: push to a tag, not a digest")
    tag = arch_tag(ref.tag or pub.tag, arch)
    return push_planned(
        pub, ref.with_tag(tag), bundles=[], client=client, progress=progress, parallel=parallel
    )


def push_planned(
    pub: Publication,
    ref: Reference | str,
    *,
    bundles: list[tuple[Path, bytes, str]],
    client: RegistryClient | None = None,
    progress: Callable[[str], None] | None = None,
    parallel: int = 3,
) -> PushResult:
    """Push a planned publication and ``bundles`` (``signature_bundles(pub)``) as referrers of its index."""
    ref = Reference.parse(ref) if isinstance(ref, str) else ref
    if ref.digest:
        raise UsageError(f"{ref}: push to a tag, not a digest")
    tag = ref.tag or pub.tag
    client = client or open_registry(ref)
    say = progress or (lambda _msg: None)
    result = PushResult(reference=str(ref.with_tag(tag)), digest=pub.index_desc.digest, tag=tag)

    # blobs in parallel (the registry hashes and stores one upload per connection), biggest first
    blobs = sorted(pub.blobs, key=lambda b: -b.desc.size)

    def send(blob: PlannedBlob) -> bool:
        name = blob.desc.annotations.get(mt.ANNOTATION_TITLE, blob.desc.media_type)
        say(f"blob {name} ({blob.desc.size} bytes)")
        return client.push_blob(blob.desc, blob.source)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for blob, sent in zip(blobs, pool.map(send, blobs), strict=True):
            if sent:
                result.blobs_sent += 1
                result.bytes_sent += blob.desc.size
            else:
                result.blobs_skipped += 1
    for desc, data in pub.manifests:
        result.manifests.append(client.push_manifest(data, desc.media_type))
    say(f"index {pub.index_desc.digest} → {tag}")
    client.push_manifest(pub.index, mt.OCI_INDEX, tag=tag)

    empty = Descriptor.for_bytes(mt.OCI_EMPTY, EMPTY_JSON)
    client.push_blob(empty, BlobSource(data=EMPTY_JSON, size=len(EMPTY_JSON)))
    for path, bundle, predicate_type in bundles:
        manifest, layer = bundle_referrer(bundle, pub.index_desc, predicate_type)
        if client.push_blob(layer, BlobSource(data=bundle, size=len(bundle))):
            result.bytes_sent += layer.size
        desc = client.add_referrer(manifest, pub.index_desc)
        say(f"referrer {path.name} → {desc.digest}")
        result.referrers.append(desc.digest)
    log.info(
        "pushed %s (%s): %d blobs sent, %d already present",
        result.reference,
        result.digest,
        result.blobs_sent,
        result.blobs_skipped,
    )
    return result


def signature_bundles(pub: Publication) -> list[tuple[Path, bytes, str]]:
    """(path, bundle, predicate type) of each bundle in ``pub.build_dir``'s ``signatures/``, refusing
    any that signs another index (a stale signature)."""
    out = []
    for path in bundle_files(pub.build_dir):
        data = path.read_bytes()
        statement = bundle_statement(data)
        subjects = statement_subjects(statement)
        if pub.index_desc.digest not in subjects:
            raise UsageError(
                f"{path}: signs {', '.join(subjects) or 'nothing'}, not this publication's index "
                f"{pub.index_desc.digest}",
                hint=f"sign the build again: diskci sign {pub.build_dir} ...",
            )
        out.append((path, data, str(statement.get("predicateType", ""))))
    return out
