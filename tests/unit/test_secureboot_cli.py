"""``diskci platform secureboot``: rotate makes the key files (0600 key), show and export print and
write the certificate (PEM, DER) and an OVMF variable store with it enrolled, rotate retires."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from diskci.cli.main import app

runner = CliRunner()


def test_rotate_show_export_and_rotate_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shown = runner.invoke(app, ["platform", "secureboot", "show", "--state-dir", str(state)])
    assert shown.exit_code != 0 and "no Secure Boot key" in str(shown.exception)
    made = runner.invoke(
        app, ["platform", "secureboot", "rotate", "--no-resign", "--json", "--state-dir", str(state)]
    )
    assert made.exit_code == 0, made.output
    first = json.loads(made.output)["certificate"]
    key_file = state / "secureboot" / "db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    shown = runner.invoke(app, ["platform", "secureboot", "show", "--json", "--state-dir", str(state)])
    assert json.loads(shown.output)["certificates"][0]["sha256_fingerprint"] == first["sha256_fingerprint"]
    assert json.loads(shown.output)["certificates"][0]["key"] == "RSA-2048"

    der = tmp_path / "fleet.der"
    out = runner.invoke(
        app,
        ["platform", "secureboot", "export", "--out", str(der), "--format", "der", "--state-dir", str(state)],
    )
    assert out.exit_code == 0, out.output
    cert = x509.load_der_x509_certificate(der.read_bytes())
    assert "diskci fleet Secure Boot key" in cert.subject.rfc4514_string()
    pem = tmp_path / "fleet.pem"
    runner.invoke(app, ["platform", "secureboot", "export", "--out", str(pem), "--state-dir", str(state)])
    assert x509.load_pem_x509_certificate(pem.read_bytes()) == cert

    again = runner.invoke(app, ["platform", "secureboot", "rotate", "--no-resign", "--state-dir", str(state)])
    assert again.exit_code != 0 and "--yes" in str(
        getattr(again.exception, "hint", "")
    )  # rotating an existing key is confirmed
    again = runner.invoke(
        app, ["platform", "secureboot", "rotate", "--yes", "--no-resign", "--json", "--state-dir", str(state)]
    )
    assert again.exit_code == 0, again.output
    certs = json.loads(
        runner.invoke(app, ["platform", "secureboot", "show", "--json", "--state-dir", str(state)]).output
    )["certificates"]
    assert [c["current"] for c in certs] == [True, False]
    assert certs[1]["sha256_fingerprint"] == first["sha256_fingerprint"]


@pytest.mark.skipif(not Path("/usr/share/OVMF/OVMF_VARS_4M.fd").is_file(), reason="needs Debian's ovmf")
def test_export_writes_an_ovmf_variable_store_with_the_key_enrolled(tmp_path: Path) -> None:
    from virt.firmware.varstore.edk2 import Edk2VarStore

    state = tmp_path / "state"
    assert (
        runner.invoke(
            app, ["platform", "secureboot", "rotate", "--no-resign", "--state-dir", str(state)]
        ).exit_code
        == 0
    )
    dest = tmp_path / "vars.fd"
    out = runner.invoke(
        app,
        [
            "platform",
            "secureboot",
            "export",
            "--vars",
            "amd64",
            "--out",
            str(dest),
            "--state-dir",
            str(state),
        ],
    )
    assert out.exit_code == 0, out.output
    varlist = Edk2VarStore(str(dest)).get_varlist()
    assert {"PK", "KEK", "db"} <= set(varlist)
    assert varlist["SecureBootEnable"].data == b"\x01"
    bad = runner.invoke(
        app,
        [
            "platform",
            "secureboot",
            "export",
            "--vars",
            "riscv64",
            "--out",
            str(dest),
            "--state-dir",
            str(state),
        ],
    )
    assert bad.exit_code != 0 and "riscv64" in str(bad.exception)
