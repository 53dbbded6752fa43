"""SPDX 2.3 (JSON) software bill of materials of a root filesystem, from its packages.json.

Deterministic: the document namespace is derived from the spec digest, the architecture and
SOURCE_DATE_EPOCH, and ``created`` is SOURCE_DATE_EPOCH, so the same build gives the same bytes.
Every installed Debian package is one SPDX package with a ``pkg:deb`` purl; the root filesystem is the
described package and CONTAINS each of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote

from diskci import __version__
from diskci.atomic import write_text
from diskci.errors import BuildError

SPDX_VERSION = "SPDX-2.3"
NAMESPACE_BASE = "https://diskci.dev/spdx"
NOASSERTION = "NOASSERTION"


class InstalledPackage(TypedDict):
    """One line of packages.json."""

    name: str
    version: str
    architecture: str
    source: str
    source_version: str


def _spdx_id(*parts: str) -> str:
    """An SPDX element id: ``SPDXRef-`` then letters, digits, '.' and '-' only."""
    return "SPDXRef-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", "-", p) for p in parts)


def purl(pkg: InstalledPackage, distribution: str, suite: str) -> str:
    """The package URL of a Debian/Ubuntu binary package (purl spec, type ``deb``)."""
    qualifiers = f"arch={quote(pkg['architecture'], safe='')}&distro={quote(suite, safe='')}"
    if pkg["source"] and (pkg["source"] != pkg["name"] or pkg["source_version"] != pkg["version"]):
        src = pkg["source"]
        if pkg["source_version"] and pkg["source_version"] != pkg["version"]:
            src += f"@{pkg['source_version']}"
        qualifiers += f"&upstream={quote(src, safe='')}"
    name = quote(pkg["name"], safe="")
    return f"pkg:deb/{distribution}/{name}@{quote(pkg['version'], safe='')}?{qualifiers}"


def build_sbom(
    packages: Sequence[InstalledPackage],
    *,
    platform: str,
    version: str,
    architecture: str,
    distribution: str,
    suite: str,
    spec_digest: str,
    source_date_epoch: int,
) -> dict[str, Any]:
    """The SPDX 2.3 document as plain JSON data."""
    created = datetime.fromtimestamp(source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    root_id = _spdx_id("RootFS", platform, architecture)
    spdx_packages: list[dict[str, Any]] = [
        {
            "SPDXID": root_id,
            "name": f"{platform}-{architecture}-rootfs",
            "versionInfo": version,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "primaryPackagePurpose": "OPERATING_SYSTEM",
            "comment": f"{distribution} {suite} root filesystem built by diskci",
        }
    ]
    relationships: list[dict[str, str]] = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": root_id}
    ]
    seen: set[str] = set()
    for pkg in sorted(packages, key=lambda p: (p["name"], p["architecture"])):
        pid = _spdx_id("Package", "deb", pkg["name"], pkg["architecture"])
        if pid in seen:
            raise BuildError(f"packages.json lists {pkg['name']}:{pkg['architecture']} twice")
        seen.add(pid)
        entry: dict[str, Any] = {
            "SPDXID": pid,
            "name": pkg["name"],
            "versionInfo": pkg["version"],
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "supplier": NOASSERTION,
            "primaryPackagePurpose": "INSTALL",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl(pkg, distribution, suite),
                }
            ],
        }
        if pkg["source"]:
            entry["sourceInfo"] = f"built from the source package {pkg['source']} {pkg['source_version']}"
        spdx_packages.append(entry)
        relationships.append(
            {"spdxElementId": root_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pid}
        )
    return {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{platform}-{architecture}-rootfs",
        "documentNamespace": (
            f"{NAMESPACE_BASE}/{platform}/{architecture}/{spec_digest}-{source_date_epoch}"
        ),
        "creationInfo": {"created": created, "creators": [f"Tool: diskci-{__version__}"]},
        "documentDescribes": [root_id],
        "packages": spdx_packages,
        "relationships": relationships,
    }


def load_packages(path: Path) -> list[InstalledPackage]:
    """Read packages.json (a list of InstalledPackage objects)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot read the package list: {exc}") from exc
    if not isinstance(data, list):
        raise BuildError(f"{path}: expected a JSON list of packages")
    return data


def write_sbom(dest: Path, packages_json: Path, **doc: Any) -> Path:
    """Write ``dest`` (sbom.spdx.json) from ``packages_json``; ``doc`` as for ``build_sbom``."""
    document = build_sbom(load_packages(packages_json), **doc)
    write_text(dest, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return dest
