"""Publication references: registry and OCI layout forms, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.registry.reference import InvalidReference, Reference


@pytest.mark.parametrize(
    ("text", "host", "repo", "tag", "digest"),
    [
        (
            "127.0.0.1:5000/ops/disk-images/debian-12:1.0.0",
            "127.0.0.1:5000",
            "ops/disk-images/debian-12",
            "1.0.0",
            None,
        ),
        ("registry.example.com/a/b", "registry.example.com", "a/b", None, None),
        ("localhost/x_y.z-w:v1_2", "localhost", "x_y.z-w", "v1_2", None),
        (
            "r.example.com:443/ops/img@sha256:" + "a" * 64,
            "r.example.com:443",
            "ops/img",
            None,
            "sha256:" + "a" * 64,
        ),
        ("r.example.com/ops/img:1@sha256:" + "b" * 64, "r.example.com", "ops/img", "1", "sha256:" + "b" * 64),
    ],
)
def test_registry_references(text: str, host: str, repo: str, tag: str | None, digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repo, tag, digest)
    assert not ref.is_layout
    assert str(ref) == text
    assert Reference.parse(str(ref)) == ref


def test_layout_references() -> None:
    ref = Reference.parse("oci-layout:/srv/oci/debian-12:1.0.0")
    assert ref.is_layout and ref.layout_path == Path("/srv/oci/debian-12") and ref.tag == "1.0.0"
    assert str(ref) == "oci-layout:/srv/oci/debian-12:1.0.0"
    untagged = Reference.parse("oci-layout:./out/oci")
    assert untagged.layout_path == Path("out/oci") and untagged.tag is None
    assert untagged.with_tag("2.0").target == "2.0"
    with pytest.raises(InvalidReference, match="needs a tag"):
        _ = untagged.target


def test_loopback_hosts_default_to_plain_http() -> None:
    assert Reference.parse("127.0.0.1:5000/a:1").is_loopback
    assert Reference.parse("localhost/a:1").is_loopback
    assert not Reference.parse("registry.example.com/a:1").is_loopback


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("debian-12:1.0", "first part must be a registry host"),
        ("registry.example.com/Ops/img:1", "bad repository"),
        ("registry.example.com/ops/img:-bad", "bad tag"),
        ("registry.example.com/ops//img", "bad repository"),
        ("registry.example.com/ops/img@sha256:1234", "invalid digest"),
        ("oci-layout:", "expected oci-layout:PATH"),
        (" registry.example.com/a:1", "surrounded by spaces"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(InvalidReference, match=problem):
        Reference.parse(text)
