"""Stage 2 of the pipeline: ``<arch>/rootfs.tar`` → the composefs image and its object store.

The image itself is written by :mod:`diskci.formats.composefs`; this stage only feeds it the tarball and
records the result in build.json.
"""

from __future__ import annotations

import os

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.formats import fstree
from diskci.formats.composefs import write
from diskci.formats.ingest import Ingest
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import (
    ANNOTATION_ARCH,
    ANNOTATION_COMPOSEFS,
    ANNOTATION_COMPOSEFS_FORMAT,
    ANNOTATION_COMPOSEFS_OBJECTS,
    COMPOSEFS_IMAGE,
)


def stage(ctx: BuildContext) -> None:
    """Stage 2: ``<arch>/rootfs.tar`` → ``<arch>/rootfs.cfs`` + ``<arch>/objects/`` (both or neither)."""
    arch_dir = ctx.arch_dir
    tarball = arch_dir / "rootfs.tar"
    if not tarball.is_file():
        raise BuildError(f"{tarball} is missing: run the rootfs stage first")
    image, objects = arch_dir / "rootfs.cfs", arch_dir / "objects"
    ctx.report("reading rootfs.tar, hashing files and filling the object store")
    with atomic_path(image) as tmp_image, atomic_path(objects, directory=True) as tmp_objects:
        os.chmod(tmp_objects, 0o755)
        with Ingest(tmp_objects, fresh=True) as ingest:
            tree = fstree.from_tar(tarball, on_file=ingest.submit)
            with open(tmp_image, "wb") as f:
                result = write(tree, f, ingest=ingest)
    artifact = ctx.add_artifact(
        image,
        COMPOSEFS_IMAGE,
        with_fsverity=True,
        annotations={
            ANNOTATION_COMPOSEFS: result.digest,
            ANNOTATION_ARCH: ctx.arch.value,
            ANNOTATION_COMPOSEFS_FORMAT: str(result.format_version),
            ANNOTATION_COMPOSEFS_OBJECTS: str(result.objects),
        },
    )
    if artifact.fsverity != result.digest:
        raise BuildError(f"{image}: fs-verity digest changed after writing ({artifact.fsverity})")
    ctx.record.composefs_digest = result.digest
    ctx.report(f"composefs digest {result.digest}, {result.objects} objects")
