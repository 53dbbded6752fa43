"""Every media type, artifact type, annotation key and schema name diskci uses, in one place.

OCI image spec: https://github.com/opencontainers/image-spec/blob/main/media-types.md
OCI annotations: https://github.com/opencontainers/image-spec/blob/main/annotations.md
Sigstore bundle: https://github.com/sigstore/protobuf-specs (application/vnd.dev.sigstore.bundle.v0.3+json)
"""

from __future__ import annotations

# --- OCI ---------------------------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_VERSION = "1.0.0"

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# --- diskci artifacts ----------------------------------------------------------------------------
ARTIFACT_TYPE_IMAGE = "application/vnd.diskci.image.v1"
BUILD_JSON = "application/vnd.diskci.build.v1+json"
ROOTFS_TAR = "application/vnd.diskci.rootfs.tar.v1"
PACKAGES_JSON = "application/vnd.diskci.packages.v1+json"
SBOM_SPDX = "application/spdx+json"
COMPOSEFS_IMAGE = "application/vnd.diskci.composefs.v1.erofs"
COMPOSEFS_OBJECTS = "application/vnd.diskci.composefs.objects.v1.tar"
KERNEL = "application/vnd.diskci.kernel.v1"
INITRAMFS = "application/vnd.diskci.initramfs.v1.cpio+zstd"
ROOT_IMAGE = "application/vnd.diskci.rootimage.v1.squashfs"
IPXE_SCRIPT = "application/vnd.diskci.ipxe.v1+text"
DISK_RAW = "application/vnd.diskci.disk.v1.raw"
DISK_QCOW2 = "application/vnd.diskci.disk.v1.qcow2"
ISO = "application/vnd.diskci.iso.v1"
UKI = "application/vnd.diskci.uki.v1+efi"  # unified kernel image (systemd stub), unsigned
# the platform's Secure Boot signed copy of a verified UKI (with the URLs it adds), served to nodes
UKI_SIGNED = "application/vnd.diskci.uki.v1+efi;signed=platform"
OCI_LAYOUT_TAR = "application/vnd.diskci.oci-layout.v1.tar"
PROVENANCE = "application/vnd.in-toto+json"

ANNOTATION_FSVERITY = "dev.diskci.fsverity-digest"
ANNOTATION_ARCH = "dev.diskci.architecture"
ANNOTATION_PLATFORM = "dev.diskci.node-platform"
ANNOTATION_COMPOSEFS = "dev.diskci.composefs-digest"
ANNOTATION_COMPOSEFS_FORMAT = "dev.diskci.composefs-format-version"
ANNOTATION_COMPOSEFS_OBJECTS = "dev.diskci.composefs-objects"
ANNOTATION_PATH = "dev.diskci.path"  # the layer's path in the build directory

# --- sigstore ------------------------------------------------------------------------------------
SIGSTORE_BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGSTORE_TRUSTED_ROOT = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
IN_TOTO_STATEMENT_V1 = "https://in-toto.io/Statement/v1"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"  # DSSE payloadType of in-toto statements
ANNOTATION_BUNDLE_CONTENT = "dev.sigstore.bundle.content"
ANNOTATION_BUNDLE_PREDICATE = "dev.sigstore.bundle.predicateType"

# --- schema names --------------------------------------------------------------------------------
BUILD_SCHEMA = "https://diskci.dev/schemas/build/v1"
WEBHOOK_SCHEMA = "https://diskci.dev/schemas/disk-image-built/v1"
SLSA_BUILD_TYPE = "https://diskci.dev/build/v1"
