"""UEFI variable stores for VMs with the fleet certificate enrolled (PyPI virt-firmware's virt-fw-vars).

The certificate goes in as PK, KEK and db (one owner GUID, derived from the certificate) and Secure
Boot is switched on; nothing else is trusted (no Microsoft keys), so such a VM boots only what the
platform signed. Templates are Debian's variable stores: ``OVMF_VARS_4M.fd`` for amd64 (with
``OVMF_CODE_4M.secboot.fd``, q35 and SMM) and ``AAVMF_VARS.ms.fd`` for arm64 (with ``AAVMF_CODE.fd``,
which Debian builds with Secure Boot support; arm64 has no SMM, so there the variables are not
protected from the guest OS, only checked by the firmware). Debian's plain ``AAVMF_VARS.fd`` is an
unformatted, all-zero flash the firmware formats at first boot, which virt-fw-vars cannot read; the
``.ms`` store is formatted, and every key it holds (PK, KEK, db, dbx: Microsoft's) is deleted first.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from diskci.errors import ResourceError, UsageError
from diskci.platform.secureboot.keys import Certificate
from diskci.process import run

TEMPLATES = {
    "amd64": Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
    "arm64": Path("/usr/share/AAVMF/AAVMF_VARS.ms.fd"),
}
FIRMWARE = {
    "amd64": Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
    "arm64": Path("/usr/share/AAVMF/AAVMF_CODE.fd"),
}
PACKAGES = {"amd64": "ovmf", "arm64": "qemu-efi-aarch64"}
_OWNER_NAMESPACE = uuid.UUID("6d1f3b8e-5c0a-5b6f-9f3e-64697363692d")  # uuid5 namespace of owner GUIDs


def owner_guid(cert: Certificate) -> str:
    """The signature owner GUID of ``cert`` in the variables (stable for one certificate)."""
    return str(uuid.uuid5(_OWNER_NAMESPACE, cert.fingerprint))


def write_varstore(
    dest: Path,
    arch: str,
    cert: Certificate,
    *,
    also_db: Sequence[Certificate] = (),
    template: Path | None = None,
) -> Path:
    """Write a variable store for ``arch`` at ``dest`` with ``cert`` as PK, KEK and db (plus
    ``also_db`` in db: retired keys during a rotation) and Secure Boot enabled."""
    if arch not in TEMPLATES:
        raise UsageError(f"architecture {arch!r}: variable stores exist for {', '.join(TEMPLATES)}")
    source = template or TEMPLATES[arch]
    if not source.is_file():
        raise ResourceError(f"no variable store template {source}", hint=f"apt-get install {PACKAGES[arch]}")
    guid = owner_guid(cert)
    with tempfile.TemporaryDirectory(prefix="diskci-vars-") as work:
        pem = Path(work) / "db.pem"
        pem.write_bytes(cert.pem)
        argv: list[str | Path] = [
            sys.executable,
            "-m",
            "virt.firmware.vars",
            "--input",
            source,
            "--output",
            dest,
        ]
        argv += ["-d", "PK", "-d", "KEK", "-d", "db", "-d", "dbx"]  # the template's keys, if any
        argv += ["--set-pk", guid, pem, "--add-kek", guid, pem, "--add-db", guid, pem]
        for i, old in enumerate(also_db):
            path = Path(work) / f"retired{i}.pem"
            path.write_bytes(old.pem)
            argv += ["--add-db", owner_guid(old), path]
        argv += ["--no-microsoft", "--sb"]
        proc = run(argv, check=False)
        if proc.returncode != 0:
            text = (proc.stdout or b"").decode(errors="replace")[-2000:]
            raise ResourceError(
                f"virt-fw-vars could not write {dest}: {text}", hint="pip install virt-firmware"
            )
    return dest
