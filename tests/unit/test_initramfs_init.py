"""The netboot init (init.sh), run piece by piece with busybox sh on the host.

busybox's standalone shell runs its own applets whatever PATH says, so these tests exercise the same
sed/tr/sha256sum/wget the initramfs has. Sourced with DISKCI_INIT_LIB=1 the init only defines its
functions; ``fail`` exits 1 instead of halting because the test shell is not PID 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import ClassVar

import pytest

INIT = Path(str(resources.files("diskci.image.initramfs").joinpath("init.sh")))
SHA = "ab" * 32


def sh(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in busybox sh after sourcing init.sh as a library."""
    full = f'. "{INIT}"\n{script}\n'
    return subprocess.run(
        ["busybox", "sh", "-c", full, "sh", *args],
        capture_output=True,
        text=True,
        env={"DISKCI_INIT_LIB": "1", "PATH": os.environ["PATH"], **(env or {})},
        timeout=60,
        check=False,
    )


PARSE = (
    'parse_cmdline "$1"; check_params; echo "$ROOT_KIND|$ROOT_URL|$ROOT_SHA256|$ON_FAILURE|$IP_MODE|$REPORT"'
)


def parsed(cmdline: str) -> list[str]:
    proc = sh(PARSE, cmdline)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().split("|")


def test_full_command_line() -> None:
    cmdline = (
        f"BOOT_IMAGE=/vmlinuz console=ttyS0 quiet diskci.root=https://h.example:8443/a/rootfs.img "
        f"diskci.root_sha256={SHA.upper()} diskci.report=http://10.0.2.2:9/r?x=1 "
        "diskci.on_failure=reboot ip=dhcp"
    )
    assert parsed(cmdline) == [
        "http",
        "https://h.example:8443/a/rootfs.img",
        SHA,
        "reboot",
        "dhcp",
        "http://10.0.2.2:9/r?x=1",
    ]


def test_defaults_are_halt_and_dhcp() -> None:
    kind, _, _, on_failure, ip, report = parsed(f"diskci.root=http://x/r.img diskci.root_sha256={SHA}")
    assert (kind, on_failure, ip, report) == ("http", "halt", "dhcp", "")


@pytest.mark.parametrize(
    ("base", "ref", "url"),
    [
        ("http://10.0.2.2:8000/amd64/boot.ipxe", "rootfs.img", "http://10.0.2.2:8000/amd64/rootfs.img"),
        ("http://h/a/b/boot.ipxe?mac=1", "rootfs.img", "http://h/a/b/rootfs.img"),
        ("http://h:1/boot.ipxe", "img/r.img", "http://h:1/img/r.img"),
        ("http://h", "r.img", "http://h/r.img"),
        ("https://h/x/boot.ipxe", "/other/r.img", "https://h/other/r.img"),
    ],
)
def test_relative_root_is_resolved_against_the_script_uri(base: str, ref: str, url: str) -> None:
    kind, got, *_ = parsed(f"diskci.root={ref} diskci.root_base={base} diskci.root_sha256={SHA}")
    assert (kind, got) == ("http", url)


def test_local_root_kinds_need_no_network() -> None:
    assert parsed(f"diskci.root=partlabel:diskci-root diskci.root_sha256={SHA} ip=off")[0] == "partlabel"
    assert parsed(f"diskci.root=cdrom:/rootfs.img diskci.root_sha256={SHA}")[0] == "cdrom"


@pytest.mark.parametrize(
    ("cmdline", "reason", "detail"),
    [
        (f"diskci.root_sha256={SHA}", "missing_parameter", "no diskci.root="),
        ("diskci.root=http://x/r.img", "missing_parameter", "no diskci.root_sha256="),
        ("diskci.root=http://x/r.img diskci.root_sha256=abc", "bad_parameter", "not 64 hexadecimal"),
        (f"diskci.root=http://x/r.img diskci.root_sha256={'g' * 64}", "bad_parameter", "not 64 hexadecimal"),
        (f"diskci.root=http://x/r diskci.root_sha256={SHA} diskci.on_failure=panic", "bad_parameter", "halt"),
        (f"diskci.root=http://x/r diskci.root_sha256={SHA} ip=10.0.0.2::10.0.0.1", "bad_parameter", "ip="),
        (f"diskci.root=r.img diskci.root_sha256={SHA}", "bad_parameter", "relative"),
        (f"diskci.root=ftp://x/r.img diskci.root_sha256={SHA}", "bad_parameter", "unsupported"),
        (f"diskci.root=partlabel: diskci.root_sha256={SHA}", "bad_parameter", "unsupported"),
        (f"diskci.root=http://x/r.img diskci.root_sha256={SHA} ip=off", "bad_parameter", "needs the network"),
        (f"diskci.root=partlabel:r diskci.root_sha256={SHA} diskci.root_size=1k", "bad_parameter", "bytes"),
    ],
)
def test_bad_command_lines_fail_with_one_diskci_line(cmdline: str, reason: str, detail: str) -> None:
    proc = sh(PARSE, cmdline)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith(f"diskci: error {reason}: ") and detail in lines[0]


def test_squashfs_size_comes_from_the_superblock(tmp_path: Path) -> None:
    dev = tmp_path / "part"
    sb = bytearray(4096 * 4)
    sb[0:4] = b"hsqs"
    sb[40:48] = (5000).to_bytes(8, "little")
    dev.write_bytes(bytes(sb))
    proc = sh('squashfs_size "$1"', str(dev))
    assert proc.stdout.strip() == "8192"
    dev.write_bytes(b"\0" * 4096)
    assert sh('squashfs_size "$1"', str(dev)).returncode == 1


class _Server(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    posts: ClassVar[list[dict[str, object]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.headers["Content-Type"] == "application/json"
        self.posts.append(json.loads(raw))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Server]]]:
    handler = type("H", (_Server,), {"files": {}, "posts": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


FETCH = 'RUN="$2"; IMAGE="$2/root.img"; parse_cmdline "$1"; check_params; NET_UP=1; fetch_root; verify_root'


def test_fetch_verify_and_report(tmp_path: Path, server: tuple[str, type[_Server]]) -> None:
    url, handler = server
    image = os.urandom(100_000)
    handler.files["/amd64/rootfs.img"] = image
    digest = hashlib.sha256(image).hexdigest()
    cmdline = (
        f"diskci.root=rootfs.img diskci.root_base={url}/amd64/boot.ipxe diskci.root_sha256={digest} "
        f"diskci.report={url}/report"
    )
    proc = sh(FETCH, cmdline, str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"diskci: verified sha256 {digest}" in proc.stdout
    assert (tmp_path / "root.img").read_bytes() == image
    assert [p["event"] for p in handler.posts] == ["fetched", "verified"]
    assert handler.posts[0]["root"] == f"{url}/amd64/rootfs.img"
    assert handler.posts[0]["root_sha256"] == digest


def test_a_changed_image_is_refused_deleted_and_reported(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    image = bytearray(os.urandom(50_000))
    digest = hashlib.sha256(image).hexdigest()
    image[1234] ^= 0x01
    handler.files["/rootfs.img"] = bytes(image)
    cmdline = f"diskci.root={url}/rootfs.img diskci.root_sha256={digest} diskci.report={url}/report"
    proc = sh(FETCH + "; echo MOUNTING", cmdline, str(tmp_path))
    assert proc.returncode == 1
    errors = [line for line in proc.stdout.splitlines() if line.startswith("diskci: error")]
    assert len(errors) == 1 and errors[0].startswith("diskci: error sha256_mismatch: sha256 mismatch for ")
    assert f"expected {digest}, got {hashlib.sha256(image).hexdigest()}" in errors[0]
    assert "MOUNTING" not in proc.stdout and not (tmp_path / "root.img").exists()
    error = handler.posts[-1]
    assert error["event"] == "error" and error["reason"] == "sha256_mismatch"
    assert "sha256 mismatch" in str(error["message"])


def test_download_failures_are_retried_then_reported(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    cmdline = f"diskci.root={url}/missing.img diskci.root_sha256={SHA} diskci.report={url}/report"
    proc = sh(FETCH, cmdline, str(tmp_path), env={"FETCH_TRIES": "2"})
    assert proc.returncode == 1
    assert "(attempt 1 of 2" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("diskci: error download_failed: could not download")
    assert handler.posts[-1]["reason"] == "download_failed"


def test_report_escapes_json(server: tuple[str, type[_Server]]) -> None:
    url, handler = server
    proc = sh(f'REPORT="{url}/r"; NET_UP=1; ROOT=x; report error odd \'quote " back \\ tab\t.\'')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert handler.posts == [
        {
            "event": "error",
            "reason": "odd",
            "message": 'quote " back \\ tab.',
            "root": "x",
            "root_sha256": "",
            "mac": "",
            "secure_boot": "unknown",
            "uptime": handler.posts[0]["uptime"],
        }
    ]


@pytest.mark.parametrize("kind", ["http", "partlabel", "cdrom"])
def test_disk_and_cdrom_drivers_load_only_for_a_local_root(tmp_path: Path, kind: str) -> None:
    (tmp_path / "modules").write_text("virtio_net\ncrc32c_intel quiet\n")
    (tmp_path / "modules.local").write_text("ahci\n")
    script = 'MODULES_LIST="$1/modules"; ROOT_KIND="$2"; modprobe() { echo "modprobe $1"; }; load_modules'
    proc = sh(script, str(tmp_path), kind)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    local = [] if kind == "http" else ["modprobe ahci"]
    assert proc.stdout.splitlines() == ["modprobe virtio_net", "modprobe crc32c_intel", *local]


def test_an_expired_image_is_refused_before_anything_is_fetched() -> None:
    past = sh("NOT_AFTER=1000; check_not_after; echo passed")
    assert past.returncode == 1
    last = past.stdout.splitlines()[-1]
    assert last.startswith("diskci: error image_expired: this boot image was valid until 1000")
    future = sh("NOT_AFTER=99999999999; check_not_after; echo passed")
    assert future.stdout.strip() == "passed"
    assert sh("check_not_after; echo passed").stdout.strip() == "passed"  # no window: no check


def test_not_after_must_be_a_unix_time() -> None:
    proc = sh(PARSE, f"diskci.root=http://h/r diskci.root_sha256={SHA} diskci.not_after=tomorrow")
    assert proc.returncode == 1
    assert "diskci: error bad_parameter: diskci.not_after=tomorrow is not a Unix time" in proc.stdout


def test_an_image_of_another_size_is_refused_before_hashing(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"x" * 100)
    proc = sh(f'IMAGE="{image}"; ROOT=r; ROOT_SIZE=99; ROOT_SHA256={SHA}; verify_root')
    assert proc.returncode == 1
    assert "diskci: error size_mismatch: size mismatch for r: expected 99 bytes, got 100" in proc.stdout
    assert not image.exists()


def test_secure_boot_state_is_off_without_uefi() -> None:
    # the host running the tests may have /sys/firmware/efi; a BIOS boot has none
    proc = sh("[ -d /sys/firmware/efi ] && echo uefi || secure_boot_state")
    assert proc.stdout.strip() in ("uefi", "off")
