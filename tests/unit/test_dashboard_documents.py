"""The run page's build-stage parser, the SBOM package reader and the dashboard's formatting filters."""

from __future__ import annotations

from diskci.platform.actions.publication_documents import sbom_packages
from diskci.platform.web.build_progress import StageEvent, stage_event, stage_events
from diskci.platform.web.pages import duration, size


def test_stage_rows_become_transitions_in_order() -> None:
    rows = [
        "::group::Build",
        "[build amd64/build]   | 12:00:01 INFO rootfs (amd64) …",
        "12:00:01 INFO rootfs amd64: cache hit (key 0123456789abcdef)",
        "12:00:01 INFO rootfs (amd64) done (0.2s)",
        "12:00:02 INFO kernel (arm64) ...",
        "12:00:09 INFO kernel (arm64) failed after 7.25s",
        "12:00:09 WARNING rootfs (amd64) done (1s)",  # not INFO: not a stage line
        "echo rootfs (amd64) …",  # no log prefix
    ]
    assert stage_events(rows) == [
        StageEvent("rootfs", "amd64", "running"),
        StageEvent("rootfs", "amd64", "cached"),
        StageEvent("rootfs", "amd64", "done", 0.2),
        StageEvent("kernel", "arm64", "running"),
        StageEvent("kernel", "arm64", "failed", 7.25),
    ]
    assert stage_event("") is None and stage_event("x" * 10_000 + " INFO ") is None
    assert StageEvent("a", "b", "done", 1.0).to_json() == {
        "stage": "a",
        "arch": "b",
        "state": "done",
        "seconds": 1.0,
    }


def test_sbom_packages_skip_the_described_root_and_tolerate_odd_entries() -> None:
    doc = {
        "packages": [
            {"SPDXID": "SPDXRef-Root", "name": "root", "versionInfo": "1"},
            {
                "SPDXID": "b",
                "name": "zlib1g",
                "versionInfo": "1:1.2.13",
                "externalRefs": [
                    {"referenceType": "cpe23Type", "referenceLocator": "cpe:x"},
                    {"referenceType": "purl", "referenceLocator": "pkg:deb/debian/zlib1g@1%3A1.2.13"},
                ],
            },
            {
                "SPDXID": "a",
                "name": "bash",
                "versionInfo": "5.2",
                "sourceInfo": "built from the source package bash 5.2",
            },
            "not a package",
        ],
        "relationships": [{"relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Root"}, 7],
    }
    root, packages = sbom_packages(doc)
    assert root == "root"
    assert [(p.name, p.version, p.purl, p.source) for p in packages] == [
        ("bash", "5.2", None, "bash 5.2"),
        ("zlib1g", "1:1.2.13", "pkg:deb/debian/zlib1g@1%3A1.2.13", None),
    ]
    assert sbom_packages({}) == (None, [])


def test_duration_and_size_read_as_people_write_them() -> None:
    assert duration(None) == "—" and duration(3.25) == "3.2 s" and duration(42) == "42 s"
    assert duration(432) == "7 min 12 s" and duration(3725) == "1 h 2 min"
    assert (
        size(None) == "—"
        and size(512) == "512 B"
        and size(1536) == "1.5 KiB"
        and size(37 * 2**30) == "37.0 GiB"
    )
