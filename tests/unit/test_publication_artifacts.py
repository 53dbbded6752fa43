"""``PublicationArtifacts``: the stored JSON round-trips; the fast text scan finds the same blobs."""

from __future__ import annotations

import json

from diskci.supplychain.verified import PublicationArtifacts

STORED = {
    "amd64": {
        "manifest_digest": "sha256:" + "1" * 64,
        "config_sha256": "2" * 64,
        "composefs_digest": None,
        "kernel_version": "6.1.0",
        "cmdline": "console=ttyS0 quiet",
        "artifacts": [
            {
                "name": "rootfs.img",
                "media_type": "application/vnd.diskci.rootimage.v1.squashfs",
                "size": 3,
                "sha256": "3" * 64,
                "fsverity": "4" * 64,
                "digest": "sha256:" + "3" * 64,
            },
            {
                "name": "vmlinuz",
                "media_type": "application/vnd.diskci.kernel.v1",
                "size": 5,
                "sha256": "5" * 64,
                "fsverity": None,
                "digest": "sha256:" + "5" * 64,
            },
        ],
    },
    "arm64": {"manifest_digest": "sha256:" + "6" * 64, "composefs_digest": "7" * 64, "artifacts": []},
}


def test_typed_reads_and_the_same_json_back() -> None:
    typed = PublicationArtifacts.model_validate(STORED)
    amd64 = typed.arch("amd64")
    assert amd64 is not None and amd64.cmdline == "console=ttyS0 quiet"
    root = amd64.file("rootfs.img")
    assert root is not None and root.sha256 == "3" * 64 and root.fsverity == "4" * 64
    assert amd64.file("missing") is None and typed.arch("riscv64") is None
    assert typed.architectures == ["amd64", "arm64"]
    assert typed.composefs_digest == "7" * 64
    assert typed.manifest_digests() == ["sha256:" + "1" * 64, "sha256:" + "6" * 64]
    assert typed.to_json()["amd64"] == STORED["amd64"]
    assert list(typed.to_json()["amd64"]) == list(STORED["amd64"])  # same key order


def test_json_scan_finds_exactly_the_typed_blob_digests() -> None:
    typed = PublicationArtifacts.model_validate(STORED)
    assert typed.blob_digests() == {"2" * 64, "3" * 64, "5" * 64}
    for text in (json.dumps(STORED), json.dumps(STORED, separators=(",", ":"))):
        assert set(PublicationArtifacts.blob_digests_in_json(text)) == typed.blob_digests()
