"""The UKI artifact: PE sections added and replaced byte-exactly, and the stage's bytes reproducible.

A small PE32+ image made here stands in for the systemd stub (for both machines: objcopy on this host
knows no arm64 PE), so the tests need no systemd-boot-efi; ``pefile`` checks the result independently.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from pathlib import Path

import pefile
import pytest

from diskci.errors import BuildError, FormatError
from diskci.formats import pe
from diskci.image.artifacts import uki
from diskci.image.pipeline import BuildContext
from diskci.manifest import Artifact, BuildManifest
from diskci.mediatypes import UKI
from diskci.spec import Architecture, load_spec

REPO = Path(__file__).resolve().parents[2]


def fake_stub(machine: int = 0x8664, *, header_room: int = 0x400, symbols: bytes = b"SYMS") -> bytes:
    """A PE32+ EFI application with one .text section (and a trailing COFF symbol table)."""
    opt_size = 112 + 16 * 8
    dos = bytearray(0x80)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    text_raw = header_room
    coff = struct.pack("<HHIIIHH", machine, 1, 0, text_raw + 0x200, 1, opt_size, 0x22)
    opt = bytearray(opt_size)
    struct.pack_into("<HBBIIIII", opt, 0, pe.PE32_PLUS, 2, 0, 0x200, 0, 0, 0x1000, 0x1000)
    struct.pack_into("<QII", opt, 24, 0, 0x1000, 0x200)  # ImageBase, SectionAlignment, FileAlignment
    struct.pack_into("<II", opt, 56, 0x2000, header_room)  # SizeOfImage, SizeOfHeaders
    struct.pack_into("<HH", opt, 68, 10, 0)  # EFI application
    struct.pack_into("<I", opt, 108, 16)
    section = struct.pack("<8sIIIIIIHHI", b".text", 0x10, 0x1000, 0x200, text_raw, 0, 0, 0, 0, 0x60000020)
    head = bytes(dos) + b"PE\0\0" + coff + bytes(opt) + section
    data = head + b"\0" * (header_room - len(head)) + b"\xc3" * 0x10 + b"\0" * 0x1F0 + symbols
    return data


def test_added_sections_are_where_a_loader_finds_them() -> None:
    stub = fake_stub()
    out = pe.add_sections(stub, [(".osrel", b"ID=debian\n"), (".linux", b"K" * 5000), (".cmdline", b"a=b")])
    parsed = pefile.PE(data=out)
    names = [s.Name.rstrip(b"\0").decode() for s in parsed.sections]
    assert names == [".text", ".osrel", ".linux", ".cmdline"]
    assert [s.VirtualAddress % 4096 for s in parsed.sections] == [0, 0, 0, 0]
    assert parsed.sections[2].get_data()[: parsed.sections[2].Misc_VirtualSize] == b"K" * 5000
    assert parsed.OPTIONAL_HEADER.SizeOfImage == parsed.sections[-1].VirtualAddress + 0x1000
    assert parsed.OPTIONAL_HEADER.CheckSum == parsed.generate_checksum()
    assert parsed.FILE_HEADER.PointerToSymbolTable == 0  # the stub's symbol table is dropped
    assert b"SYMS" not in out
    assert pe.PeImage.parse(out).section_data(".cmdline") == b"a=b"
    assert pe.add_sections(stub, [(".osrel", b"ID=debian\n")]) == pe.add_sections(
        stub, [(".osrel", b"ID=debian\n")]
    )


def test_the_last_section_is_replaced_as_if_it_had_been_added_so() -> None:
    stub = fake_stub(0xAA64)
    first = pe.add_sections(stub, [(".linux", b"K" * 999), (".cmdline", b"short")])
    replaced = pe.replace_last_section(first, ".cmdline", b"a much longer command line " * 40)
    direct = pe.add_sections(
        stub, [(".linux", b"K" * 999), (".cmdline", b"a much longer command line " * 40)]
    )
    assert replaced == direct
    with pytest.raises(FormatError, match=r"last section is \.cmdline, not \.linux"):
        pe.replace_last_section(first, ".linux", b"x")


def test_refusals() -> None:
    stub = fake_stub()
    with pytest.raises(FormatError, match=r"already has a \.text section"):
        pe.add_sections(stub, [(".text", b"x")])
    with pytest.raises(FormatError, match="at most 7 more characters"):
        pe.add_sections(stub, [(".toolongname", b"x")])
    with pytest.raises(FormatError, match="no room for 20 more section headers"):
        pe.add_sections(stub, [(f".s{i}", b"x") for i in range(20)])
    signed = bytearray(stub)
    struct.pack_into("<II", signed, 0x80 + 4 + 20 + 112 + 4 * 8, 0x2000, 8)  # a certificate table
    with pytest.raises(FormatError, match="is signed"):
        pe.add_sections(bytes(signed), [(".osrel", b"x")])
    with pytest.raises(FormatError, match="not a PE image"):
        pe.PeImage.parse(b"\x7fELF" + b"\0" * 100)


def _rootfs_tar(path: Path, stub: bytes, stub_name: str) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (f"./usr/lib/systemd/boot/efi/{stub_name}", stub),
            ("./usr/lib/os-release", b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./etc/os-release")
        link.type = tarfile.SYMTYPE
        link.linkname = "../usr/lib/os-release"
        tar.addfile(link)


def _stage_once(build_dir: Path, arch: Architecture) -> bytes:
    spec = load_spec(REPO / "platforms" / "debian-12.yaml")
    manifest = BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=1_700_000_000,
    )
    ctx = BuildContext(
        spec, REPO / "platforms" / "debian-12.yaml", arch, build_dir, build_dir / "c", 0, True, manifest
    )
    ctx.arch_dir.mkdir(parents=True)
    machine = uki.MACHINES[arch]
    _rootfs_tar(ctx.arch_dir / "rootfs.tar", fake_stub(machine), uki.STUB_NAMES[arch])
    (ctx.arch_dir / "vmlinuz").write_bytes(b"MZkernel" * 1000)
    (ctx.arch_dir / "initramfs.img").write_bytes(b"\x28\xb5\x2f\xfd" * 500)
    (ctx.arch_dir / "rootfs.img").write_bytes(b"hsqs" * 1024)
    ctx.add_artifact(ctx.arch_dir / "rootfs.img", "application/vnd.diskci.rootimage.v1.squashfs")
    uki.stage(ctx)
    art: Artifact = ctx.record.artifact(uki.NAME)
    assert art.media_type == UKI
    return (ctx.arch_dir / uki.NAME).read_bytes()


@pytest.mark.parametrize("arch", [Architecture.amd64, Architecture.arm64])
def test_the_stage_is_bit_identical_across_two_builds_and_pins_the_root(
    tmp_path: Path, arch: Architecture
) -> None:
    first = _stage_once(tmp_path / "one", arch)
    second = _stage_once(tmp_path / "two", arch)
    assert first == second
    image = pe.PeImage.parse(first)
    root = tmp_path / "one" / arch.value / "rootfs.img"
    sha = hashlib.sha256(root.read_bytes()).hexdigest()
    cmdline = image.section_data(".cmdline").decode()
    assert cmdline.startswith(f"diskci.root_sha256={sha} diskci.root_size=4096 ip=dhcp console=")
    osrel = image.section_data(".osrel").decode()
    assert "ID=debian" in osrel and "IMAGE_ID=debian-12" in osrel and "IMAGE_VERSION=2026.11.0" in osrel
    assert image.section_data(".linux") == b"MZkernel" * 1000
    assert image.machine == uki.MACHINES[arch]


def test_a_spec_may_not_set_the_root_itself() -> None:
    with pytest.raises(BuildError, match=r"may not set diskci\.root_sha256"):
        uki.build_cmdline(root_sha256="a" * 64, root_size=1, cmdline="quiet diskci.root_sha256=00")
