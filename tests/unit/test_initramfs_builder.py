"""The kernel, initramfs, root image and iPXE stages on a small synthetic root filesystem tarball."""

from __future__ import annotations

import io
import json
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from diskci.errors import BuildError
from diskci.image.artifacts import ipxe, kernel, rootimage
from diskci.image.artifacts.rootfs_tar import RootfsTarball
from diskci.image.initramfs import builder
from diskci.image.pipeline import BuildContext
from diskci.manifest import BuildManifest
from diskci.spec import Architecture, load_spec

REPO = Path(__file__).resolve().parents[2]
EPOCH = 1764000000
KVER = "6.1.0-99-amd64"
MODDIR = f"usr/lib/modules/{KVER}"
DEP = """kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/loop.ko.xz:
kernel/fs/overlayfs/overlay.ko:
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/ext4/ext4.ko:
"""


def _add(
    tar: tarfile.TarFile, name: str, data: bytes = b"", *, link: str = "", kind: bytes = tarfile.REGTYPE
) -> None:
    info = tarfile.TarInfo(f"./{name}")
    info.type = tarfile.SYMTYPE if link else kind
    info.linkname = link
    info.size = 0 if link or kind == tarfile.DIRTYPE else len(data)
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = EPOCH
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def make_rootfs(path: Path, *, busybox: bool = True) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in (
            "",
            "usr",
            "usr/bin",
            "usr/lib",
            "boot",
            "etc",
            "usr/share",
            "usr/share/doc",
            "usr/share/doc/x",
        ):
            _add(tar, d, kind=tarfile.DIRTYPE)
        _add(tar, "bin", link="usr/bin")
        _add(tar, "lib", link="usr/lib")
        _add(tar, "vmlinuz", link=f"boot/vmlinuz-{KVER}")
        _add(tar, f"boot/vmlinuz-{KVER}", b"KERNEL" * 1000)
        if busybox:
            _add(tar, "usr/bin/busybox", Path(shutil.which("busybox") or "/bin/busybox").read_bytes())
        _add(tar, "usr/share/doc/x/README", b"docs")
        _add(tar, "usr/share/doc/x/copyright", b"licence")
        _add(tar, "etc/hostname", b"node\n")
        _add(tar, f"{MODDIR}/modules.dep", DEP.encode())
        _add(tar, f"{MODDIR}/modules.builtin", b"kernel/fs/squashfs/squashfs.ko\n")
        _add(tar, f"{MODDIR}/modules.softdep", b"softdep libcrc32c pre: crc32c\nsoftdep ext4 pre: crc16\n")
        _add(tar, f"{MODDIR}/modules.alias", b"alias crc32c crc32c_generic\nalias fs-ext4 ext4\n")
        _add(
            tar,
            f"{MODDIR}/modules.order",
            b"".join(p.split(":")[0].encode() + b"\n" for p in DEP.splitlines()),
        )
        for line in DEP.splitlines():
            path = line.split(":")[0]
            body = f"MODULE {path}".encode()
            _add(tar, f"{MODDIR}/{path}", lzma.compress(body) if path.endswith(".xz") else body)


@pytest.fixture
def ctx(tmp_path: Path) -> BuildContext:
    spec_path = REPO / "platforms" / "debian-12-amd64.yaml"
    spec = load_spec(spec_path)
    (tmp_path / "amd64").mkdir()
    make_rootfs(tmp_path / "amd64" / "rootfs.tar")
    manifest = BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=EPOCH,
    )
    return BuildContext(
        spec=spec,
        spec_path=spec_path,
        arch=Architecture.amd64,
        build_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        source_date_epoch=EPOCH,
        use_cache=False,
        manifest=manifest,
    )


def test_tarball_paths_follow_merged_usr_links(tmp_path: Path) -> None:
    make_rootfs(tmp_path / "r.tar")
    with RootfsTarball(tmp_path / "r.tar") as root:
        assert root.resolve("/bin/busybox") == "usr/bin/busybox"
        assert root.resolve("lib/modules/../modules") == "usr/lib/modules"
        assert root.read("vmlinuz") == b"KERNEL" * 1000
        assert root.listdir("/lib/modules") == [KVER]
        with pytest.raises(BuildError, match="no /nonexistent"):
            root.read("/nonexistent")


def test_kernel_stage_records_the_version(ctx: BuildContext) -> None:
    kernel.stage(ctx)
    assert (ctx.arch_dir / "vmlinuz").read_bytes() == b"KERNEL" * 1000
    assert ctx.record.kernel_version == KVER
    assert ctx.record.artifact("vmlinuz").media_type == "application/vnd.diskci.kernel.v1"


def _extract(img: Path, dest: Path) -> None:
    raw = subprocess.run(["zstd", "-dc", str(img)], capture_output=True, check=True).stdout
    subprocess.run(["busybox", "cpio", "-i", "-d"], input=raw, cwd=dest, capture_output=True, check=True)


def test_initramfs_holds_busybox_modules_closure_and_init(ctx: BuildContext, tmp_path: Path) -> None:
    builder.stage(ctx)
    first = (ctx.arch_dir / "initramfs.img").read_bytes()
    builder.stage(ctx)
    assert (ctx.arch_dir / "initramfs.img").read_bytes() == first  # deterministic
    out = tmp_path / "x"
    out.mkdir()
    _extract(ctx.arch_dir / "initramfs.img", out)
    assert (out / "init").read_bytes().startswith(b"#!/bin/sh")
    assert (out / "bin" / "switch_root").readlink() == Path("busybox")
    mods = out / "lib" / "modules" / KVER
    # the loop module was xz-compressed in the root: stored uncompressed, modules.dep rewritten
    assert (mods / "kernel/drivers/block/loop.ko").read_bytes() == b"MODULE kernel/drivers/block/loop.ko.xz"
    dep = (mods / "modules.dep").read_text()
    assert "kernel/drivers/block/loop.ko:\n" in dep and ".xz" not in dep
    assert "ext4" not in dep and not (mods / "kernel/fs/ext4").exists()
    load = (out / "etc" / "diskci" / "modules").read_text().splitlines()
    assert load[:4] == ["virtio_pci", "virtio_net", "loop", "overlay"]  # squashfs is built in
    assert load.index("crc32c_generic quiet") < load.index("erofs")  # soft dependency of libcrc32c
    assert (mods / "modules.alias").read_text() == "alias crc32c crc32c_generic\n"


def test_initramfs_needs_busybox_and_the_required_modules(ctx: BuildContext) -> None:
    make_rootfs(ctx.arch_dir / "rootfs.tar", busybox=False)
    with pytest.raises(BuildError, match="no /bin/busybox"):
        builder.stage(ctx)
    with pytest.raises(BuildError, match="virtio_net, loop"):
        builder.select_modules("kernel/drivers/virtio/virtio_pci.ko:\n", "kernel/fs/squashfs/squashfs.ko\n")
    assert not (ctx.arch_dir / "initramfs.img").exists()


def test_applet_table_of_a_busybox_binary() -> None:
    names = builder.applet_names(Path(shutil.which("busybox") or "/bin/busybox").read_bytes())
    assert set(names) >= builder.INIT_APPLETS and names == sorted(names)
    with pytest.raises(BuildError, match="applet table"):
        builder.applet_names(b"\0".join([b"sh", b"ls"] * 30))


def test_root_image_filter_excludes_boot_and_docs_but_keeps_copyright() -> None:
    names = ["", "boot", f"boot/vmlinuz-{KVER}", "vmlinuz", "usr", "usr/share/doc", "usr/share/doc/x"]
    names += ["usr/share/doc/x/README", "usr/share/doc/x/copyright", "etc/hostname"]
    keep = rootimage.kept_paths(names, ("/usr/share/doc/*",), ("/usr/share/doc/*/copyright",))
    assert keep == {
        "",
        "usr",
        "usr/share",
        "usr/share/doc",
        "usr/share/doc/x",
        "usr/share/doc/x/copyright",
        "etc",
        "etc/hostname",
    }


def test_marker_unit_prints_the_boot_line() -> None:
    unit = rootimage.marker_unit("debian-12-amd64", "2026.11.0")
    assert f"ExecStart=/{rootimage.MARKER_SCRIPT}" in unit
    assert "After=multi-user.target" in unit and "WantedBy=multi-user.target" in unit
    script = rootimage.marker_script("debian-12-amd64", "2026.11.0")
    assert 'echo "diskci: booted debian-12-amd64 2026.11.0" >/dev/console' in script
    with pytest.raises(BuildError, match="may only hold"):
        rootimage.marker_unit("x; reboot", "1")
    with pytest.raises(BuildError, match="may only hold"):
        rootimage.marker_script("debian-12", "1 $(reboot)")


def test_marker_script_reports_booted_to_the_platform(tmp_path: Path) -> None:
    """Run the script with busybox sh against a fake /proc/cmdline and a local HTTP receiver."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is installed by make setup"
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/netboot/report?publication=3"
    script = rootimage.marker_script("debian-12-amd64", "2026.11.0")
    # the same script, reading a fake command line and writing the console to a file
    script = script.replace("/proc/cmdline", str(tmp_path / "cmdline")).replace(
        "/dev/console", str(tmp_path / "console")
    )
    (tmp_path / "cmdline").write_text(f"console=ttyS0 diskci.report={url} ip=dhcp\n")
    (tmp_path / "booted").write_text(script)
    env = {"PATH": f"{Path(busybox).parent}:/usr/bin:/bin"}
    subprocess.run([busybox, "sh", str(tmp_path / "booted")], check=True, env=env, timeout=30)
    server.server_close()
    assert (tmp_path / "console").read_text().startswith("diskci: booted debian-12-amd64 2026.11.0")
    assert len(bodies) == 1
    report = json.loads(bodies[0])
    assert report["event"] == "booted" and report["version"] == "2026.11.0"


def test_root_image_is_a_squashfs_without_boot(ctx: BuildContext, tmp_path: Path) -> None:
    rootimage.stage(ctx)
    img = ctx.arch_dir / "rootfs.img"
    art = ctx.record.artifact("rootfs.img")
    assert art.fsverity is not None and art.size == img.stat().st_size
    listing = subprocess.run(
        ["unsquashfs", "-lc", "-d", "", str(img)], capture_output=True, text=True, check=True
    )
    files = set(listing.stdout.split())
    assert "/etc/systemd/system/multi-user.target.wants/diskci-booted.service" in files
    assert "/usr/share/doc/x/copyright" in files
    assert not any(f.startswith("/boot") or f == "/vmlinuz" or f.endswith("README") for f in files)
    first = img.read_bytes()
    rootimage.stage(ctx)
    assert img.read_bytes() == first


def test_ipxe_script_boots_relative_urls(ctx: BuildContext) -> None:
    kernel.stage(ctx)
    builder.stage(ctx)
    rootimage.stage(ctx)
    ipxe.stage(ctx)
    text = (ctx.arch_dir / "boot.ipxe").read_text()
    sha = ctx.record.artifact("rootfs.img").sha256
    assert text.startswith("#!ipxe\n")
    assert (
        "\nkernel vmlinuz initrd=initramfs.img diskci.root=rootfs.img diskci.root_base=${diskci_base} "
        in text
    )
    assert f"diskci.root_sha256={sha} ip=dhcp console=ttyS0 quiet\n" in text
    assert "\ninitrd initramfs.img\nboot\n" in text
    assert "http" not in text.replace("http(s)", "")  # no absolute URL anywhere


def test_ipxe_refuses_settings_in_the_command_line() -> None:
    with pytest.raises(BuildError, match="iPXE settings"):
        ipxe.render(platform="p", version="1", arch="amd64", root_sha256="0" * 64, cmdline="x=${net0/ip}")


def test_disk_and_cdrom_drivers_are_listed_apart() -> None:
    dep = "".join(
        f"kernel/{name}.ko:{deps}\n"
        for name, deps in (
            ("virtio_pci", ""),
            ("virtio_net", ""),
            ("loop", ""),
            ("overlay", ""),
            ("erofs", ""),
            ("libahci", ""),
            ("ahci", " kernel/libahci.ko"),
            ("crc64", ""),
            ("nvme", " kernel/crc64.ko"),
        )
    )
    modules = builder.select_modules(dep, "kernel/squashfs.ko\n", "softdep nvme pre: crc64\n")
    assert modules.load == ("virtio_pci", "virtio_net", "loop", "overlay", "erofs", "crc64", "nvme", "ahci")
    assert modules.local == {"ahci", "crc64", "nvme"}  # crc64: pulled in only by nvme
    assert "kernel/libahci.ko" in modules.paths
