"""``<arch>/oci/``: the root filesystem as an OCI image layout (one layer), for podman, skopeo, docker.

Layout (image-spec v1.1 ``image-layout.md``)::

    oci/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    oci/index.json                 one manifest, with its platform and ref name (the spec version)
    oci/blobs/sha256/<digest>      the manifest, the config and the layer

The layer is rootfs.tar compressed with zstd (level 3, multi-threaded mode: zstd's output in that mode
does not depend on the number of threads; checked with -T1 and -T2), so the same rootfs.tar gives
the same layer. The config's ``created`` is SOURCE_DATE_EPOCH and every JSON document is written with
sorted keys, so the manifest digest depends on nothing but the inputs. zstd rather than gzip: gzip
took 18 s on a 600 MB root here, zstd under 2 s; podman, skopeo, containerd and docker >= 23 read it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskci.atomic import atomic_path
from diskci.canonical import canonical_json
from diskci.errors import BuildError
from diskci.image.artifacts.esp import rootfs_tar
from diskci.image.pipeline import BuildContext
from diskci.manifest import sha256_file
from diskci.mediatypes import (
    ANNOTATION_CREATED,
    ANNOTATION_REF_NAME,
    ANNOTATION_TITLE,
    ANNOTATION_VERSION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TAR_ZSTD,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
)
from diskci.process import require_tool, run, tool_version
from diskci.spec import Architecture

ZSTD_LEVEL = 3
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# OCI platform of each diskci architecture (image-spec config.md: GOARCH values, arm64 variant v8).
_PLATFORMS: dict[Architecture, dict[str, str]] = {
    Architecture.amd64: {"architecture": "amd64", "os": "linux"},
    Architecture.arm64: {"architecture": "arm64", "os": "linux", "variant": "v8"},
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _put_json(blobs: Path, media_type: str, doc: dict[str, Any]) -> Descriptor:
    data = canonical_json(doc)
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return Descriptor(media_type, f"sha256:{digest}", len(data))


def _put_layer(blobs: Path, tar: Path) -> Descriptor:
    zstd = require_tool("zstd", "zstd")
    tmp = blobs / ".layer.tmp"
    run([zstd, "-q", "--no-progress", "-T0", f"-{ZSTD_LEVEL}", "-f", tar, "-o", tmp])
    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    tmp.rename(blobs / digest)
    return Descriptor(OCI_LAYER_TAR_ZSTD, f"sha256:{digest}", size)


def write_layout(
    dest: Path,
    tar: Path,
    *,
    arch: Architecture,
    created: int,
    ref_name: str,
    title: str,
    diff_id: str | None = None,
) -> Descriptor:
    """Write an OCI image layout at ``dest`` (a new directory) with ``tar`` as its one layer.

    ``diff_id`` is the sha256 hex of the uncompressed tar when already known (build.json has it).
    Returns the manifest's descriptor.
    """
    if not tar.is_file():
        raise BuildError(f"OCI image: {tar} is not a file")
    if diff_id is None:
        diff_id = sha256_file(tar)
    platform = _PLATFORMS[arch]
    stamp = rfc3339(created)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer = _put_layer(blobs, tar)
    config = _put_json(
        blobs,
        OCI_CONFIG,
        {
            "created": stamp,
            **platform,
            "config": {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": stamp, "created_by": f"diskci build {title}"}],
        },
    )
    annotations = {ANNOTATION_CREATED: stamp, ANNOTATION_TITLE: title, ANNOTATION_VERSION: ref_name}
    manifest = _put_json(
        blobs,
        OCI_MANIFEST,
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json()],
            "annotations": annotations,
        },
    )
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**manifest.to_json(), "platform": platform, "annotations": {ANNOTATION_REF_NAME: ref_name}}
        ],
    }
    (dest / "index.json").write_bytes(canonical_json(index))
    (dest / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    return manifest


def stage(ctx: BuildContext) -> None:
    """Build ``<arch>/oci/`` from ``<arch>/rootfs.tar``; build.json records its index.json."""
    tar = rootfs_tar(ctx)
    try:
        diff_id: str | None = ctx.record.artifact("rootfs.tar").sha256
    except BuildError:
        diff_id = None
    dest = ctx.arch_dir / "oci"
    ctx.report("zstd layer")
    with atomic_path(dest, directory=True) as tmp:
        write_layout(
            tmp,
            tar,
            arch=ctx.arch,
            created=ctx.source_date_epoch,
            ref_name=ctx.spec.version,
            title=f"{ctx.spec.name} {ctx.spec.version} {ctx.arch.value}",
            diff_id=diff_id,
        )
        tmp.chmod(0o755)
    ctx.tool("zstd", tool_version(["zstd", "--version"]))
    ctx.add_artifact(dest / "index.json", OCI_INDEX)
