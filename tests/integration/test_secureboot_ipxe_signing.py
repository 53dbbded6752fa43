"""``diskci platform secureboot export --ipxe``: Debian's iPXE EFI binary signed by the fleet key.

The output verifies with ``sbverify --cert`` against the exported fleet certificate and the unsigned
original does not (nor does the output against another key's certificate); what was signed is iPXE
itself (its sections are byte for byte the original's); what is not an unsigned EFI binary for the
architecture asked for is refused with a message naming the file.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.errors import FormatError, ResourceError, UsageError
from diskci.formats import pe
from diskci.platform.secureboot.ipxe import DEBIAN_IPXE

IPXE = DEBIAN_IPXE["amd64"]
pytestmark = pytest.mark.skipif(
    not IPXE.is_file(), reason="needs Debian's ipxe package (deploy/debian-packages.txt)"
)
runner = CliRunner()


def _secureboot(*args: str | Path) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, ["platform", "secureboot", *map(str, args)])
    return result.exit_code, result.output, result.exception


def _sbverify(cert: Path, image: Path) -> int:
    return subprocess.run(["sbverify", "--cert", cert, image], capture_output=True, check=False).returncode


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory with a fleet key (``secureboot rotate``)."""
    state = tmp_path / "state"
    code, output, _ = _secureboot("rotate", "--no-resign", "--state-dir", state)
    assert code == 0, output
    return state


def test_the_signed_ipxe_verifies_against_the_fleet_certificate_and_the_unsigned_one_does_not(
    state: Path, tmp_path: Path
) -> None:
    cert = tmp_path / "fleet.pem"
    assert _secureboot("export", "--out", cert, "--state-dir", state)[0] == 0
    signed = tmp_path / "ipxe.signed.efi"
    code, output, _ = _secureboot(
        "export", "--ipxe", "amd64", "--out", signed, "--json", "--state-dir", state
    )
    assert code == 0, output
    result = json.loads(output)
    assert result["written"] == str(signed) and str(IPXE) in result["what"]

    assert _sbverify(cert, signed) == 0
    assert _sbverify(cert, IPXE) != 0  # Debian's build carries no signature the firmware would accept

    other = tmp_path / "other"
    assert _secureboot("rotate", "--no-resign", "--state-dir", other)[0] == 0
    other_cert = tmp_path / "other.pem"
    assert _secureboot("export", "--out", other_cert, "--state-dir", other)[0] == 0
    assert _sbverify(other_cert, signed) != 0

    original, image = pe.PeImage.parse(IPXE.read_bytes()), pe.PeImage.parse(signed.read_bytes())
    assert image.signed and not original.signed
    assert [s.name for s in image.sections] == [s.name for s in original.sections]
    for theirs, ours in zip(original.sections, image.sections, strict=True):
        assert image.section_data(ours.name) == original.section_data(theirs.name)


def test_what_is_not_an_unsigned_efi_binary_for_the_architecture_is_refused(
    state: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.efi"
    # an x86-64 binary offered as arm64's
    code, _, exc = _secureboot(
        "export", "--ipxe", "arm64", "--ipxe-source", IPXE, "--out", out, "--state-dir", state
    )
    assert code != 0 and isinstance(exc, FormatError) and "not an EFI binary for arm64" in exc.message
    # already signed
    signed = tmp_path / "signed.efi"
    assert _secureboot("export", "--ipxe", "amd64", "--out", signed, "--state-dir", state)[0] == 0
    code, _, exc = _secureboot(
        "export", "--ipxe", "amd64", "--ipxe-source", signed, "--out", out, "--state-dir", state
    )
    assert code != 0 and isinstance(exc, FormatError) and "already signed" in exc.message
    # not a PE image at all
    script = tmp_path / "boot.ipxe"
    script.write_text("#!ipxe\nshell\n")
    code, _, exc = _secureboot(
        "export", "--ipxe", "amd64", "--ipxe-source", script, "--out", out, "--state-dir", state
    )
    assert code != 0 and isinstance(exc, FormatError) and str(script) in exc.message
    # Debian builds no arm64 iPXE: the error says where one must come from
    code, _, exc = _secureboot("export", "--ipxe", "arm64", "--out", out, "--state-dir", state)
    assert code != 0 and isinstance(exc, ResourceError) and "--ipxe-source" in (exc.hint or "")
    # one output at a time; an unknown architecture
    code, _, exc = _secureboot(
        "export", "--ipxe", "amd64", "--vars", "amd64", "--out", out, "--state-dir", state
    )
    assert code != 0 and isinstance(exc, UsageError)
    code, _, exc = _secureboot("export", "--ipxe", "riscv64", "--out", out, "--state-dir", state)
    assert code != 0 and isinstance(exc, UsageError) and "riscv64" in exc.message
    assert not out.exists()  # nothing half-written by any refusal


def test_without_a_fleet_key_nothing_is_signed(tmp_path: Path) -> None:
    out = tmp_path / "out.efi"
    code, _, exc = _secureboot("export", "--ipxe", "amd64", "--out", out, "--state-dir", tmp_path / "empty")
    assert code != 0 and "no Secure Boot key" in str(exc)
    assert not out.exists()
