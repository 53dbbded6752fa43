"""Mirror detection from the host's apt sources (one-line and deb822), and fetching the suite's Release."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.image.mirror import (
    MirrorError,
    fetch_release,
    host_mirror,
    host_sources,
    parse_deb822,
    parse_one_line,
    resolve_mirror,
)
from diskci.spec import Architecture, PlatformSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def spec(**change: Any) -> PlatformSpec:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    return parse_spec(data | change)


def test_one_line_entries_with_options_and_comments() -> None:
    text = """
# a comment
deb [arch=amd64,i386 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian bookworm main contrib
deb-src http://mirror.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main # trailing comment
deb [ arch=arm64 ] http://ports.example/debian bookworm main
garbage line
"""
    entries = parse_one_line(text)
    assert len(entries) == 4
    first = entries[0]
    assert first.uris == ("http://mirror.example/debian",) and first.suites == ("bookworm",)
    assert first.components == ("main", "contrib") and first.architectures == ("amd64", "i386")
    assert entries[1].types == ("deb-src",)
    assert entries[3].architectures == ("arm64",)


def test_deb822_paragraphs() -> None:
    text = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://one.example/debian
 http://two.example/debian
Suites: trixie
Components: main
Enabled: no
"""
    entries = parse_deb822(text)
    assert len(entries) == 2
    assert entries[0].suites == ("bookworm", "bookworm-updates") and entries[0].enabled
    assert entries[1].uris == ("http://one.example/debian", "http://two.example/debian")
    assert not entries[1].enabled


def write_apt(tmp_path: Path, sources_list: str = "", **parts: str) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (apt / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return apt


def test_host_mirror_picks_the_source_serving_the_suite(tmp_path: Path) -> None:
    apt = write_apt(
        tmp_path,
        "deb http://old.example/debian bullseye main\n",
        local_sources="Types: deb\nURIs: http://local.example/debian/\nSuites: bookworm\nComponents: main\n",
        other_list="deb [arch=arm64] http://arm.example/debian bookworm main\n",
        disabled_sources="Types: deb\nURIs: http://no.example/debian\nSuites: bookworm\nEnabled: no\n",
    )
    assert len(host_sources(apt)) == 4
    # sources.list.d is read in sorted order: disabled, local, other
    assert host_mirror("bookworm", Architecture.amd64, apt) == "http://local.example/debian"
    assert host_mirror("bullseye", Architecture.amd64, apt) == "http://old.example/debian"
    assert host_mirror("noble", Architecture.amd64, apt) is None


def test_host_mirror_respects_architecture_restrictions(tmp_path: Path) -> None:
    apt = write_apt(tmp_path, "deb [arch=amd64] http://amd.example/debian bookworm main\n")
    assert host_mirror("bookworm", Architecture.amd64, apt) == "http://amd.example/debian"
    assert host_mirror("bookworm", Architecture.arm64, apt) is None


def test_host_mirror_ignores_unsupported_schemes(tmp_path: Path) -> None:
    apt = write_apt(tmp_path, "deb mirror+file:/etc/apt/mirrors.txt bookworm main\n")
    assert host_mirror("bookworm", Architecture.amd64, apt) is None


def test_resolve_mirror_order(tmp_path: Path) -> None:
    apt = write_apt(tmp_path, "deb http://host.example/debian bookworm main\n")
    assert resolve_mirror(spec(mirror="http://spec.example/debian/"), Architecture.amd64, apt) == (
        "http://spec.example/debian"
    )
    assert resolve_mirror(spec(), Architecture.amd64, apt) == "http://host.example/debian"
    empty = write_apt(tmp_path / "empty")
    assert resolve_mirror(spec(), Architecture.amd64, empty) == "http://deb.debian.org/debian"


RELEASE = b"""Origin: Debian
Suite: stable
Codename: bookworm
Architectures: all amd64 arm64
Components: main contrib non-free-firmware
"""


def local_mirror(tmp_path: Path, name: str = "InRelease", body: bytes = RELEASE) -> str:
    dists = tmp_path / "mirror" / "dists" / "bookworm"
    dists.mkdir(parents=True)
    (dists / name).write_bytes(body)
    return (tmp_path / "mirror").as_uri()


def test_fetch_release_from_a_file_mirror(tmp_path: Path) -> None:
    mirror = local_mirror(tmp_path)
    release = fetch_release(mirror, "bookworm", Architecture.arm64, ("main",))
    assert release.content == RELEASE and release.url.endswith("/dists/bookworm/InRelease")
    assert release.field("Architectures") == ("all", "amd64", "arm64")
    assert len(release.sha256) == 64


def test_fetch_release_falls_back_to_release(tmp_path: Path) -> None:
    release = fetch_release(local_mirror(tmp_path, "Release"), "bookworm", Architecture.amd64)
    assert release.url.endswith("/Release")


def test_fetch_release_errors(tmp_path: Path) -> None:
    mirror = local_mirror(tmp_path, body=RELEASE.replace(b" arm64", b""))
    with pytest.raises(MirrorError, match="does not serve arm64"):
        fetch_release(mirror, "bookworm", Architecture.arm64)
    with pytest.raises(MirrorError, match="does not serve the suite 'trixie'"):
        fetch_release(mirror, "trixie", Architecture.amd64)
    with pytest.raises(MirrorError, match="no component"):
        fetch_release(mirror, "bookworm", Architecture.amd64, ("universe",))


def test_unreachable_mirror_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(MirrorError) as info:
        fetch_release(f"http://127.0.0.1:{port}/debian", "bookworm", Architecture.amd64, timeout=5)
    assert f"the mirror http://127.0.0.1:{port}/debian is unreachable" in info.value.message
    assert "mirror:" in (info.value.hint or "")
