"""The fleet-signed iPXE: the network boot loader a Secure Boot machine's firmware will start.

Under Secure Boot the firmware starts only images signed by a key in its ``db``, so the unsigned iPXE
that Debian ships (and QEMU's iPXE option ROMs) is refused. A fleet that enrols only its own key signs
iPXE with it, exactly as the platform signs UKIs (the same ``UkiSigner``: ``sbsign`` with the key file,
or the HSM plug-in), and hands the result to its machines as their boot loader (the DHCP/TFTP
``filename``, a boot entry, or QEMU's ``-kernel``). That iPXE fetches the platform's ``/boot.ipxe``;
the script chains the signed UKI, and iPXE starts it through the firmware's ``LoadImage``, which checks
its signature too. So iPXE adds no trust of its own: it only moves bytes the firmware then verifies.

``signed_ipxe(signer, arch)`` signs Debian's build (package ``ipxe``: ``/usr/lib/ipxe/ipxe.efi``, with
iPXE's own network drivers; ``snponly.efi`` beside it uses the firmware's) or a given file, after
checking that it is an unsigned EFI image for that architecture.
"""

from __future__ import annotations

from pathlib import Path

from diskci.errors import FormatError, ResourceError, UsageError
from diskci.formats import pe
from diskci.platform.secureboot.signer import UkiSigner

# Debian's iPXE EFI builds (package ``ipxe``); Debian 12 builds iPXE for x86-64 EFI only.
DEBIAN_IPXE = {"amd64": Path("/usr/lib/ipxe/ipxe.efi")}
IPXE_PACKAGE = "ipxe"
PE_MACHINES = {"amd64": 0x8664, "arm64": 0xAA64}


def _check_arch(arch: str) -> None:
    if arch not in PE_MACHINES:
        raise UsageError(f"architecture {arch!r}: iPXE EFI binaries are signed for {', '.join(PE_MACHINES)}")


def default_ipxe(arch: str) -> Path:
    """Debian's iPXE EFI binary for ``arch`` (ResourceError when it is not installed or not built)."""
    _check_arch(arch)
    path = DEBIAN_IPXE.get(arch)
    if path is None:
        raise ResourceError(
            f"Debian ships no iPXE EFI binary for {arch}",
            hint=f"Build iPXE's bin-{'arm64' if arch == 'arm64' else 'x86_64'}-efi/ipxe.efi and pass it"
            " with --ipxe-source.",
        )
    if not path.is_file():
        raise ResourceError(f"no iPXE EFI binary at {path}", hint=f"apt-get install {IPXE_PACKAGE}")
    return path


def check_ipxe_image(data: bytes, arch: str, source: Path) -> None:
    """FormatError unless ``data`` is an unsigned EFI (PE32+) image for ``arch``'s machine type."""
    try:
        image = pe.PeImage.parse(data)
    except FormatError as exc:
        raise FormatError(f"{source}: {exc.message}") from None
    if image.magic != pe.PE32_PLUS or image.machine != PE_MACHINES[arch]:
        raise FormatError(
            f"{source}: a PE image for machine {image.machine:#06x}, not an EFI binary for {arch}"
            f" (machine {PE_MACHINES[arch]:#06x})"
        )
    if image.signed:
        raise FormatError(
            f"{source} is already signed: sign the unsigned build",
            hint="Remove its signature first with: sbattach --remove FILE",
        )


def signed_ipxe(signer: UkiSigner, arch: str, source: Path | None = None) -> bytes:
    """``source`` (default: Debian's iPXE for ``arch``) signed by ``signer`` (which checks the
    signature against its certificate before returning it)."""
    _check_arch(arch)
    path = source if source is not None else default_ipxe(arch)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the iPXE binary {path}: {exc.strerror or exc}") from None
    check_ipxe_image(data, arch, path)
    return signer.sign(data)
