"""``<arch>/disk.raw``: a GPT disk that boots by UEFI into the diskci initramfs, root from its own disk.

Layout (512-byte sectors, every partition aligned to 1 MiB)::

    LBA 0        protective MBR, GPT header and entries
    1 MiB        ESP "diskci-esp" (FAT32): systemd-boot, loader entry, kernel, initramfs
    after it     "diskci-root": rootfs.img byte for byte (the partition is exactly its size)
    end          backup GPT

The disk GUID and both partition GUIDs are uuid5 values of the spec name, version and architecture,
so the same inputs give the same disk, byte for byte. The table is written by ``sfdisk`` on the image
file and the partitions' contents are copied in at their offsets: no loop devices, no mounting.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.image.artifacts import esp
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import DISK_RAW
from diskci.process import require_tool, run, tool_version

ROOT_LABEL = "diskci-root"
ESP_LABEL = "diskci-esp"
SECTOR = 512
ALIGN = esp.MIB
ESP_MINIMUM = 64 * esp.MIB  # FAT32 needs at least 65525 clusters; 64 MiB with 512-byte clusters

TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# "Linux filesystem data", not a Discoverable-Partitions root type: nothing should auto-mount it.
TYPE_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

# uuid5 namespace of every GUID diskci derives: uuid5(NAMESPACE_URL, "https://diskci.dev/disk-images").
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://diskci.dev/disk-images")


def derived_guid(platform: str, version: str, arch: str, role: str) -> uuid.UUID:
    """The GUID of ``role`` ("disk", "esp", "root") for one platform, version and architecture."""
    return uuid.uuid5(NAMESPACE, f"{platform}/{version}/{arch}/{role}")


def root_options(cmdline: str, root_sha256: str) -> str:
    return f"{cmdline} diskci.root=partlabel:{ROOT_LABEL} diskci.root_sha256={root_sha256}".strip()


@dataclass(frozen=True)
class Layout:
    """Byte offsets and sizes of the two partitions, and the disk's total size."""

    esp_offset: int
    esp_size: int
    root_offset: int
    root_size: int
    disk_size: int

    @classmethod
    def plan(cls, esp_size: int, root_size: int) -> Layout:
        if root_size % SECTOR:
            raise BuildError(f"rootfs.img is {root_size} bytes, not a whole number of {SECTOR}-byte sectors")
        esp_offset = ALIGN
        root_offset = esp.round_up(esp_offset + esp_size, ALIGN)
        # Room after the last partition for the backup GPT (33 sectors), rounded to the alignment.
        disk_size = esp.round_up(root_offset + root_size + 33 * SECTOR, ALIGN)
        return cls(esp_offset, esp_size, root_offset, root_size, disk_size)

    def sfdisk_script(self, disk: uuid.UUID, esp_part: uuid.UUID, root_part: uuid.UUID) -> str:
        def part(offset: int, size: int, type_: str, guid: uuid.UUID, name: str) -> str:
            return (
                f"start={offset // SECTOR}, size={size // SECTOR}, type={type_}, "
                f'uuid={str(guid).upper()}, name="{name}"\n'
            )

        return (
            "label: gpt\n"
            f"label-id: {str(disk).upper()}\n"
            "unit: sectors\n"
            f"sector-size: {SECTOR}\n"
            f"first-lba: {ALIGN // SECTOR}\n"
            "\n"
            + part(self.esp_offset, self.esp_size, TYPE_ESP, esp_part, ESP_LABEL)
            + part(self.root_offset, self.root_size, TYPE_LINUX_DATA, root_part, ROOT_LABEL)
        )


def copy_into(disk: Path, offset: int, source: Path) -> None:
    """Copy ``source`` into ``disk`` at ``offset`` (what ``dd conv=notrunc seek=`` does)."""
    size = source.stat().st_size
    with open(disk, "r+b") as out, open(source, "rb") as src:
        done = 0
        while done < size:  # in-kernel copy: no round trip of the bytes through Python
            n = os.copy_file_range(src.fileno(), out.fileno(), size - done, done, offset + done)
            if n == 0:
                raise BuildError(f"{source} shrank while it was copied into {disk}")
            done += n


def stage(ctx: BuildContext) -> None:
    """Build ``<arch>/disk.raw`` from the kernel, the initramfs and rootfs.img of this architecture."""
    sfdisk = require_tool("sfdisk", "fdisk")
    kernel, initramfs, rootimg = (ctx.arch_dir / n for n in ("vmlinuz", "initramfs.img", "rootfs.img"))
    for p in (kernel, initramfs, rootimg):
        if not p.is_file():
            raise BuildError(f"disk.raw needs {p}, which the earlier stages did not produce")
    root_sha256 = ctx.record.artifact("rootfs.img").sha256
    identity = (ctx.spec.name, ctx.spec.version, ctx.arch.value)

    ctx.report("finding the UEFI boot loader")
    loader = esp.find_loader(ctx)
    ctx.tool(f"systemd-boot ({ctx.arch.value})", loader.origin)  # host or target root, per architecture
    files = esp.loader_files(
        ctx, loader, kernel, initramfs, root_options(ctx.spec.cmdline_for(ctx.arch), root_sha256)
    )
    layout = Layout.plan(esp.esp_size(files, minimum=ESP_MINIMUM), rootimg.stat().st_size)
    dest = ctx.arch_dir / "disk.raw"
    with atomic_path(dest) as tmp, tempfile.TemporaryDirectory(dir=ctx.arch_dir, prefix=".raw-") as work:
        ctx.report(f"ESP ({layout.esp_size // esp.MIB} MiB FAT32)")
        esp_img = Path(work) / "esp.img"
        esp.make_fat(
            esp_img,
            files,
            size=layout.esp_size,
            label="DISKCI-ESP",
            serial=esp.volume_serial("/".join((*identity, "esp"))),
            source_date_epoch=ctx.source_date_epoch,
            fat32=True,
        )
        ctx.report("GPT (sfdisk)")
        with open(tmp, "wb") as f:
            f.truncate(layout.disk_size)
        script = layout.sfdisk_script(
            derived_guid(*identity, "disk"), derived_guid(*identity, "esp"), derived_guid(*identity, "root")
        )
        run([sfdisk, "--no-reread", "--no-tell-kernel", "--quiet", tmp], input=script.encode(), env=ctx.env())
        ctx.report("copying the partitions")
        copy_into(tmp, layout.esp_offset, esp_img)
        copy_into(tmp, layout.root_offset, rootimg)
    esp.fat_tool_versions(ctx)
    ctx.tool("sfdisk", tool_version([sfdisk, "--version"]))
    ctx.add_artifact(dest, DISK_RAW)
