"""The SPDX 2.3 SBOM: valid per the official SPDX 2.3 JSON schema, deterministic, one package per deb.

tests/assets/spdx-2.3-schema.json is schemas/spdx-schema.json of github.com/spdx/spdx-spec at tag v2.3
(commit aadf3b0b8dbbabdb4d880b0fc714255fea436ff7), unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from diskci.errors import BuildError
from diskci.image.sbom import InstalledPackage, build_sbom, purl, write_sbom

ASSETS = Path(__file__).resolve().parents[1] / "assets"

PACKAGES: list[InstalledPackage] = [
    {
        "name": "libc6",
        "version": "2.36-9+deb12u14",
        "architecture": "amd64",
        "source": "glibc",
        "source_version": "2.36-9+deb12u14",
    },
    {
        "name": "busybox-static",
        "version": "1:1.35.0-4+b7",
        "architecture": "amd64",
        "source": "busybox",
        "source_version": "1:1.35.0-4",
    },
    {
        "name": "adduser",
        "version": "3.134",
        "architecture": "all",
        "source": "adduser",
        "source_version": "3.134",
    },
]
DOC: dict[str, Any] = {
    "platform": "debian-12-amd64",
    "version": "2026.11.0",
    "architecture": "amd64",
    "distribution": "debian",
    "suite": "bookworm",
    "spec_digest": "ab" * 32,
    "source_date_epoch": 1764000000,
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((ASSETS / "spdx-2.3-schema.json").read_text())
    assert schema["title"] == "SPDX 2.3"
    return jsonschema.Draft7Validator(schema)


def test_sbom_is_valid_spdx_23(validator: jsonschema.Draft7Validator) -> None:
    doc = build_sbom(PACKAGES, **DOC)
    errors = [e.message for e in validator.iter_errors(doc)]
    assert errors == []
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["dataLicense"] == "CC0-1.0"


def test_the_schema_rejects_what_it_should(validator: jsonschema.Draft7Validator) -> None:
    doc = build_sbom(PACKAGES, **DOC)
    del doc["packages"][1]["downloadLocation"]
    assert not validator.is_valid(doc)


def test_every_package_listed_with_purl_and_relationship() -> None:
    doc = build_sbom(PACKAGES, **DOC)
    root, *pkgs = doc["packages"]
    assert doc["documentDescribes"] == [root["SPDXID"]]
    assert [p["name"] for p in pkgs] == ["adduser", "busybox-static", "libc6"]
    ids = [p["SPDXID"] for p in doc["packages"]]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in ids)
    contains = {r["relatedSpdxElement"] for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert contains == {p["SPDXID"] for p in pkgs}
    by_name = {p["name"]: p for p in pkgs}
    assert by_name["busybox-static"]["versionInfo"] == "1:1.35.0-4+b7"
    locator = by_name["busybox-static"]["externalRefs"][0]["referenceLocator"]
    assert (
        locator == "pkg:deb/debian/busybox-static@1%3A1.35.0-4%2Bb7?arch=amd64&distro=bookworm"
        "&upstream=busybox%401%3A1.35.0-4"
    )
    assert by_name["adduser"]["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/adduser@3.134?arch=all&distro=bookworm"
    )


def test_deterministic_from_spec_digest_and_epoch(tmp_path: Path) -> None:
    pj = tmp_path / "packages.json"
    pj.write_text(json.dumps(PACKAGES))
    a = write_sbom(tmp_path / "a.spdx.json", pj, **DOC).read_bytes()
    b = write_sbom(tmp_path / "b.spdx.json", pj, **DOC).read_bytes()
    assert a == b
    doc = json.loads(a)
    assert doc["creationInfo"]["created"] == "2025-11-24T16:00:00Z"
    assert doc["documentNamespace"] == f"https://diskci.dev/spdx/debian-12-amd64/amd64/{'ab' * 32}-1764000000"
    other = build_sbom(PACKAGES, **(DOC | {"source_date_epoch": 1}))
    assert other["documentNamespace"] != doc["documentNamespace"]
    assert other["creationInfo"]["created"] == "1970-01-01T00:00:01Z"


def test_duplicate_package_refused() -> None:
    with pytest.raises(BuildError, match="twice"):
        build_sbom([PACKAGES[0], PACKAGES[0]], **DOC)


def test_unreadable_package_list(tmp_path: Path) -> None:
    bad = tmp_path / "packages.json"
    bad.write_text("{not json")
    with pytest.raises(BuildError, match="cannot read the package list"):
        write_sbom(tmp_path / "x.json", bad, **DOC)
    assert not (tmp_path / "x.json").exists()


def test_purl_without_source_difference() -> None:
    pkg: InstalledPackage = {
        "name": "bash",
        "version": "5.2.15-2+b8",
        "architecture": "amd64",
        "source": "bash",
        "source_version": "5.2.15-2",
    }
    assert purl(pkg, "debian", "bookworm").endswith("&upstream=bash%405.2.15-2")
