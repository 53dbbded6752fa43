"""GPT layout, derived GUIDs and FAT images of disk.raw, checked with the tools that read them."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from diskci.errors import BuildError, ToolError
from diskci.image.artifacts import esp, raw
from diskci.process import run

EPOCH = 1764000000


def test_guids_are_derived_and_distinct() -> None:
    a = raw.derived_guid("debian-12-amd64", "2026.11.0", "amd64", "disk")
    assert a == raw.derived_guid("debian-12-amd64", "2026.11.0", "amd64", "disk")
    assert a.version == 5
    others = {
        raw.derived_guid("debian-12-amd64", "2026.11.0", "amd64", "esp"),
        raw.derived_guid("debian-12-amd64", "2026.11.1", "amd64", "disk"),
        raw.derived_guid("debian-12-arm64", "2026.11.0", "arm64", "disk"),
    }
    assert a not in others and len(others) == 3
    assert a == uuid.uuid5(
        uuid.uuid5(uuid.NAMESPACE_URL, "https://diskci.dev/disk-images"),
        "debian-12-amd64/2026.11.0/amd64/disk",
    )


def test_layout_aligns_partitions_and_fits_the_root() -> None:
    layout = raw.Layout.plan(64 * esp.MIB, 140 * esp.MIB + 4096)
    assert layout.esp_offset == esp.MIB
    assert layout.root_offset % esp.MIB == 0 and layout.root_offset >= layout.esp_offset + layout.esp_size
    assert layout.disk_size % esp.MIB == 0
    assert layout.disk_size - (layout.root_offset + layout.root_size) >= 33 * 512


def test_root_image_must_be_whole_sectors() -> None:
    with pytest.raises(BuildError, match="not a whole number of 512-byte sectors"):
        raw.Layout.plan(64 * esp.MIB, 1000)


def test_sfdisk_writes_the_planned_table(tmp_path: Path) -> None:
    layout = raw.Layout.plan(64 * esp.MIB, 8 * esp.MIB)
    ids = [raw.derived_guid("p", "1", "amd64", r) for r in ("disk", "esp", "root")]
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(layout.disk_size)
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", disk],
        input=layout.sfdisk_script(*ids).encode(),
    )
    table = json.loads(subprocess.run(["sfdisk", "-J", disk], capture_output=True, check=True).stdout)[
        "partitiontable"
    ]
    assert table["label"] == "gpt" and table["id"].lower() == str(ids[0])
    esp_part, root_part = table["partitions"]
    assert (esp_part["name"], esp_part["uuid"].lower()) == ("diskci-esp", str(ids[1]))
    assert esp_part["type"] == raw.TYPE_ESP
    assert (root_part["name"], root_part["uuid"].lower()) == ("diskci-root", str(ids[2]))
    assert root_part["start"] * 512 == layout.root_offset and root_part["size"] * 512 == layout.root_size


def test_fat_image_is_reproducible_and_readable(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel" * 1000)
    files: dict[str, Path | bytes] = {"/EFI/BOOT/BOOTX64.EFI": b"loader", "/diskci/vmlinuz": kernel}
    images = []
    for name in ("a.img", "b.img"):
        img = tmp_path / name
        esp.make_fat(
            img,
            files,
            size=8 * esp.MIB,
            label="DISKCI-EFI",
            serial="9a3c0f12",
            source_date_epoch=EPOCH,
            fat32=False,
        )
        images.append(img.read_bytes())
    assert images[0] == images[1]
    listing = subprocess.run(
        ["mdir", "-i", tmp_path / "a.img", "-b", "-/", "::/"], capture_output=True, text=True, check=True
    ).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing and "::/diskci/vmlinuz" in listing
    out = subprocess.run(
        ["mtype", "-i", tmp_path / "a.img", "::/diskci/vmlinuz"], capture_output=True, check=True
    ).stdout
    assert out == kernel.read_bytes()
    blkid = subprocess.run(["blkid", tmp_path / "a.img"], capture_output=True, text=True, check=True).stdout
    assert 'UUID="9A3C-0F12"' in blkid and 'LABEL="DISKCI-EFI"' in blkid


def test_a_failing_tool_is_named_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as info:
        esp.make_fat(
            tmp_path / "x.img",
            {},
            size=8 * esp.MIB,
            label="X",
            serial="zzzz",
            source_date_epoch=EPOCH,
            fat32=False,
        )
    assert info.value.tool == "mlabel"
    assert "not a valid serial number" in info.value.diagnostics()
