"""The OCI image layout writer: schema of every document, digests, determinism, skopeo's view."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from diskci import mediatypes as mt
from diskci.errors import BuildError
from diskci.image.artifacts import oci
from diskci.spec import Architecture

EPOCH = 1764000000
DIGEST = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
DESCRIPTOR = {
    "type": "object",
    "required": ["mediaType", "digest", "size"],
    "properties": {
        "mediaType": {"type": "string"},
        "digest": DIGEST,
        "size": {"type": "integer", "minimum": 0},
    },
}
INDEX_SCHEMA = {
    "type": "object",
    "required": ["schemaVersion", "mediaType", "manifests"],
    "properties": {
        "schemaVersion": {"const": 2},
        "mediaType": {"const": mt.OCI_INDEX},
        "manifests": {"type": "array", "minItems": 1, "maxItems": 1, "items": DESCRIPTOR},
    },
}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["schemaVersion", "mediaType", "config", "layers"],
    "properties": {
        "schemaVersion": {"const": 2},
        "mediaType": {"const": mt.OCI_MANIFEST},
        "config": {
            **DESCRIPTOR,
            "properties": {**DESCRIPTOR["properties"], "mediaType": {"const": mt.OCI_CONFIG}},
        },
        "layers": {"type": "array", "minItems": 1, "maxItems": 1, "items": DESCRIPTOR},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
CONFIG_SCHEMA = {
    "type": "object",
    "required": ["architecture", "os", "created", "rootfs"],
    "properties": {
        "architecture": {"type": "string"},
        "os": {"const": "linux"},
        "created": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
        "rootfs": {
            "type": "object",
            "required": ["type", "diff_ids"],
            "properties": {"type": {"const": "layers"}, "diff_ids": {"type": "array", "items": DIGEST}},
        },
    },
}


def small_rootfs(path: Path) -> Path:
    """A tiny root filesystem tarball with a directory, a file and a symlink (fixed metadata)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in (
            ("./etc", tarfile.DIRTYPE, b""),
            ("./etc/os-release", tarfile.REGTYPE, b'ID=debian\nVERSION_ID="12"\n'),
            ("./bin", tarfile.DIRTYPE, b""),
            ("./bin/sh", tarfile.SYMTYPE, b""),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, EPOCH, 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind == tarfile.SYMTYPE:
                info.linkname = "busybox"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def blob(layout: Path, digest: str) -> bytes:
    algo, hexdigest = digest.split(":")
    data = (layout / "blobs" / algo / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {digest} does not match its digest"
    return data


def write(tmp_path: Path, name: str, arch: Architecture = Architecture.amd64) -> tuple[Path, Path]:
    tar = small_rootfs(tmp_path / "rootfs.tar")
    dest = tmp_path / name
    oci.write_layout(dest, tar, arch=arch, created=EPOCH, ref_name="2026.11.0", title="test 2026.11.0")
    return dest, tar


def documents(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_bytes())
    jsonschema.validate(index, INDEX_SCHEMA)
    desc = index["manifests"][0]
    manifest_bytes = blob(layout, desc["digest"])
    assert len(manifest_bytes) == desc["size"]
    manifest = json.loads(manifest_bytes)
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    config_bytes = blob(layout, manifest["config"]["digest"])
    assert len(config_bytes) == manifest["config"]["size"]
    config = json.loads(config_bytes)
    jsonschema.validate(config, CONFIG_SCHEMA)
    return index, manifest, config


def test_layout_documents_and_digests(tmp_path: Path) -> None:
    layout, tar = write(tmp_path, "oci")
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index, manifest, config = documents(layout)
    assert index["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert index["manifests"][0]["annotations"] == {mt.ANNOTATION_REF_NAME: "2026.11.0"}
    assert config["created"] == "2025-11-24T16:00:00Z"
    assert manifest["annotations"][mt.ANNOTATION_CREATED] == "2025-11-24T16:00:00Z"
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    # The one layer is the tarball, zstd-compressed; its diff_id is the tarball's sha256.
    layer = manifest["layers"][0]
    assert layer["mediaType"] == mt.OCI_LAYER_TAR_ZSTD
    compressed = blob(layout, layer["digest"])
    assert len(compressed) == layer["size"]
    plain = subprocess.run(
        ["zstd", "-d", "-q", "-c"], input=compressed, capture_output=True, check=True
    ).stdout
    assert plain == tar.read_bytes()
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    # Nothing but the three blobs the documents name.
    names = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    wanted = {index["manifests"][0]["digest"], manifest["config"]["digest"], layer["digest"]}
    assert names == {d.split(":")[1] for d in wanted}


def test_layout_is_deterministic(tmp_path: Path) -> None:
    a, _ = write(tmp_path, "a")
    b, _ = write(tmp_path, "b")
    assert (a / "index.json").read_bytes() == (b / "index.json").read_bytes()
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_arm64_platform_has_variant(tmp_path: Path) -> None:
    layout, _ = write(tmp_path, "oci", Architecture.arm64)
    index, _, config = documents(layout)
    assert index["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert (config["architecture"], config["variant"]) == ("arm64", "v8")


def test_missing_tarball_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"nothere\.tar is not a file"):
        oci.write_layout(
            tmp_path / "oci",
            tmp_path / "nothere.tar",
            arch=Architecture.amd64,
            created=EPOCH,
            ref_name="x",
            title="x",
        )
    assert not (tmp_path / "oci").exists()


def test_skopeo_accepts_the_layout(tmp_path: Path) -> None:
    layout, _ = write(tmp_path, "oci")
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:2026.11.0"], capture_output=True, text=True, check=True
    ).stdout
    info = json.loads(out)
    assert (info["Architecture"], info["Os"], info["Created"]) == ("amd64", "linux", "2025-11-24T16:00:00Z")
    index, manifest, _ = documents(layout)
    assert info["Digest"] == index["manifests"][0]["digest"]
    assert info["Layers"] == [manifest["layers"][0]["digest"]]
    # A copy checks every blob against its digest.
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:2026.11.0", f"dir:{tmp_path / 'copy'}"],
        capture_output=True,
        check=True,
    )


def test_skopeo_refuses_a_corrupted_layer(tmp_path: Path) -> None:
    layout, _ = write(tmp_path, "oci")
    _, manifest, _ = documents(layout)
    layer_path = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer_path.write_bytes(bytes(data))
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:2026.11.0", f"dir:{tmp_path / 'copy'}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "digest" in proc.stderr.lower()
