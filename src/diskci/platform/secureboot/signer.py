"""Who signs a UKI: the ``UkiSigner`` interface, ``sbsign`` with the fleet key file by default.

A signer turns an unsigned PE image into an Authenticode-signed one and names the certificate that
verifies it. ``load_signer`` picks the one the settings name: ``secureboot_signer`` empty means
``SbsignSigner`` over the key files (``keys.FleetKey``); ``"package.module:factory"`` imports a
factory called with the settings (an HSM's signer: the private key never leaves it).
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from diskci.errors import PlatformError, UsageError
from diskci.platform.secureboot.keys import Certificate, FleetKey
from diskci.platform.settings import PlatformSettings
from diskci.process import require_tool, run


class SigningFailed(PlatformError):
    """The signer could not sign (or its signature did not verify)."""


@runtime_checkable
class UkiSigner(Protocol):
    """Signs PE images for Secure Boot."""

    def certificate(self) -> Certificate:
        """The certificate the signatures verify against (what the firmware's db must hold)."""
        ...

    def sign(self, image: bytes) -> bytes:
        """``image`` (unsigned PE) with an Authenticode signature appended."""
        ...


class SbsignSigner:
    """Debian's ``sbsign`` (sbsigntool) with the fleet key file; each signature checked by ``sbverify``."""

    def __init__(self, key: FleetKey) -> None:
        self.key = key

    def certificate(self) -> Certificate:
        return self.key.certificate()

    def sign(self, image: bytes) -> bytes:
        cert = self.key.certificate()  # NoSigningKey when there is none
        sbsign = require_tool("sbsign", "sbsigntool")
        sbverify = require_tool("sbverify", "sbsigntool")
        with tempfile.TemporaryDirectory(prefix="diskci-sbsign-") as work:
            unsigned, signed = Path(work) / "unsigned.efi", Path(work) / "signed.efi"
            unsigned.write_bytes(image)
            proc = run(
                [sbsign, "--key", self.key.key_file, "--cert", cert.path, "--output", signed, unsigned],
                check=False,
            )
            if proc.returncode != 0 or not signed.is_file():
                raise SigningFailed(f"sbsign failed (exit {proc.returncode}): {_text(proc)}")
            check = run([sbverify, "--cert", cert.path, signed], check=False)
            if check.returncode != 0:
                raise SigningFailed(f"sbverify refused what sbsign signed: {_text(check)}")
            return signed.read_bytes()


def _text(proc: object) -> str:
    out = (getattr(proc, "stdout", b"") or b"") + (getattr(proc, "stderr", b"") or b"")
    return out.decode(errors="replace").strip()[-2000:]


def load_signer(settings: PlatformSettings) -> UkiSigner:
    """The signer ``settings`` name (see the module docstring)."""
    name = settings.secureboot_signer.strip()
    if not name:
        return SbsignSigner(FleetKey.from_settings(settings))
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise UsageError(f"DISKCI_SECUREBOOT_SIGNER={name!r}: expected 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"DISKCI_SECUREBOOT_SIGNER={name!r}: cannot load it: {exc}") from None
    signer = factory(settings)
    if not isinstance(signer, UkiSigner):
        raise UsageError(f"DISKCI_SECUREBOOT_SIGNER={name!r} made {type(signer).__name__}, not a UkiSigner")
    return signer
