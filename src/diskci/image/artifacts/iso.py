"""``<arch>/netboot.iso``: a hybrid ISO 9660 image that boots from a CD/DVD or written to a USB stick.

Boot chain:
- UEFI (every architecture): the El Torito EFI image ``/boot/efiboot.img`` is a FAT image holding
  systemd-boot, a loader entry, the kernel and the initramfs (the same ESP layout as disk.raw); it is
  also exposed as a GPT partition so firmware finds it on a USB stick.
- BIOS (amd64): a GRUB i386-pc El Torito core image with its modules and a three-line config embedded
  (``search --fs-uuid`` for this ISO, ``linux``, ``initrd``), reading ``/boot/vmlinuz`` and
  ``/boot/initramfs.img`` from the ISO; GRUB's ``boot_hybrid.img`` in the MBR boots it from a stick.
Either way the kernel gets ``diskci.root=cdrom:/rootfs.img diskci.root_sha256=<sha256 of rootfs.img>``.

Reproducibility: xorriso stamps every file and directory with SOURCE_DATE_EPOCH, runs with
SOURCE_DATE_EPOCH (which fixes the volume dates, the volume UUID and the GPT GUIDs derived from it),
grub-mkimage output depends only on its inputs, and the EFI image comes from esp.make_fat.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.image.artifacts import esp
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import ISO
from diskci.process import require_tool, run, tool_version
from diskci.spec import Architecture

ROOT_PATH = "/rootfs.img"
GRUB_PC_DIR = Path("/usr/lib/grub/i386-pc")
BIOS_MODULES = ("biosdisk", "iso9660", "part_msdos", "part_gpt", "search_fs_uuid", "linux", "echo")


def volume_uuid(source_date_epoch: int) -> str:
    """The ISO 9660 volume UUID xorriso derives from a date: YYYYMMDDhhmmsscc (UTC)."""
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(source_date_epoch))


def grub_uuid(source_date_epoch: int) -> str:
    """The same UUID as GRUB's ``search --fs-uuid`` spells it: YYYY-MM-DD-hh-mm-ss-cc."""
    u = volume_uuid(source_date_epoch)
    return "-".join((u[0:4], u[4:6], u[6:8], u[8:10], u[10:12], u[12:14], u[14:16]))


def volume_id(name: str) -> str:
    """An ISO 9660 volume ID (d-characters, at most 32) naming the platform."""
    vid = "".join(c if c.isalnum() else "_" for c in name.upper())
    return vid[:32]


def root_options(cmdline: str, root_sha256: str) -> str:
    return f"{cmdline} diskci.root=cdrom:{ROOT_PATH} diskci.root_sha256={root_sha256}".strip()


def _bios_core_image(dest: Path, cfg: str, work: Path) -> None:
    """GRUB's El Torito core image with ``cfg`` embedded (it runs before any module file is read)."""
    mkimage = require_tool("grub-mkimage", "grub-common")
    if not (GRUB_PC_DIR / "boot_hybrid.img").is_file():
        raise BuildError(f"{GRUB_PC_DIR}/boot_hybrid.img is missing", hint="Install 'grub-pc-bin'.")
    cfg_path = work / "embedded.cfg"
    cfg_path.write_text(cfg)
    argv: list[str | Path] = [mkimage, "-O", "i386-pc-eltorito", "-d", GRUB_PC_DIR, "-p", "/boot/grub"]
    run([*argv, "-c", cfg_path, "-o", dest, *BIOS_MODULES])


def stage(ctx: BuildContext) -> None:
    """Build ``<arch>/netboot.iso`` from the kernel, the initramfs and rootfs.img."""
    xorriso = require_tool("xorriso", "xorriso")
    kernel, initramfs, rootimg = (ctx.arch_dir / n for n in ("vmlinuz", "initramfs.img", "rootfs.img"))
    for p in (kernel, initramfs, rootimg):
        if not p.is_file():
            raise BuildError(f"netboot.iso needs {p}, which the earlier stages did not produce")
    options = root_options(ctx.spec.cmdline_for(ctx.arch), ctx.record.artifact("rootfs.img").sha256)
    epoch = ctx.source_date_epoch
    bios = ctx.arch is Architecture.amd64

    loader = esp.find_loader(ctx)
    ctx.tool(f"systemd-boot ({ctx.arch.value})", loader.origin)  # host or target root, per architecture
    dest = ctx.arch_dir / "netboot.iso"
    with atomic_path(dest) as tmp, tempfile.TemporaryDirectory(dir=ctx.arch_dir, prefix=".iso-") as w:
        work = Path(w)
        ctx.report("EFI boot image")
        files = esp.loader_files(ctx, loader, kernel, initramfs, options)
        efiboot = work / "efiboot.img"
        esp.make_fat(
            efiboot,
            files,
            size=esp.esp_size(files, minimum=8 * esp.MIB),
            label="DISKCI-EFI",
            serial=esp.volume_serial(f"{ctx.spec.name}/{ctx.spec.version}/{ctx.arch.value}/iso-efi"),
            source_date_epoch=epoch,
            fat32=False,
        )
        # ISO path -> file on disk (graft points: nothing is copied into a staging tree).
        grafts = {ROOT_PATH: rootimg, "/boot/efiboot.img": efiboot}
        boot_args = ["-eltorito-alt-boot"] if bios else []
        boot_args += ["-e", "boot/efiboot.img", "-no-emul-boot", "-efi-boot-part", "--efi-boot-image"]
        if bios:
            ctx.report("BIOS boot image (GRUB)")
            cfg = (
                f"search --no-floppy --fs-uuid --set=root {grub_uuid(epoch)}\n"
                f"echo 'diskci: loading {ctx.spec.name} {ctx.spec.version}'\n"
                f"linux /boot/vmlinuz {options}\n"
                "initrd /boot/initramfs.img\n"
                "boot\n"
            )
            _bios_core_image(work / "bios.img", cfg, work)
            grafts.update(
                {
                    "/boot/vmlinuz": kernel,
                    "/boot/initramfs.img": initramfs,
                    "/boot/grub/bios.img": work / "bios.img",
                }
            )
            boot_args = [
                "-b", "boot/grub/bios.img", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                "--grub2-boot-info", "--grub2-mbr", str(GRUB_PC_DIR / "boot_hybrid.img"),
                *boot_args, "--protective-msdos-label",
            ]  # fmt: skip
            ctx.tool("grub-mkimage", tool_version(["grub-mkimage", "--version"]))
        ctx.report("xorriso")
        stamp = volume_uuid(epoch)
        argv: list[str | Path] = [xorriso, "-as", "mkisofs", "-o", tmp, "-r", "-V", volume_id(ctx.spec.name)]
        argv += ["--modification-date=" + stamp, "--set_all_file_dates", stamp, *boot_args]
        argv += ["-graft-points", *(f"{iso_path}={path}" for iso_path, path in sorted(grafts.items()))]
        run(argv, env=ctx.env())
    esp.fat_tool_versions(ctx)
    ctx.tool("xorriso", tool_version([xorriso, "-version"]))
    ctx.add_artifact(dest, ISO)
