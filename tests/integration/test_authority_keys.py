"""``diskci authority keys show|rotate``, ``trusted-root`` and ``log verify``: a bundle signed through the
served authority before an intermediate and a CT log rotation, and one signed after it, both verify in
sigstore-python and in sigstore-js against the trusted root printed after the rotation (it lists both
keys with their validFor windows); the running server uses the new keys without a restart; the log
audit names the entry or checkpoint a tampered copy of the log got wrong."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from served_authority import served_authority
from typer.testing import CliRunner

from diskci import mediatypes as mt
from diskci.cli.main import app
from diskci.errors import SupplyChainError, UsageError
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import load_trusted_root, sign_statement, verify_bundle
from diskci.supplychain.id_token import IdTokenVerifier, identity_of
from diskci.supplychain.log_audit import LogInconsistent
from diskci.supplychain.policy import IdentityPolicy
from diskci.supplychain.sigstore_signer import SigstoreSigner
from oidc_helpers import FakeIssuer
from sigstore_js import verify_with_sigstore_js

RUNNER = CliRunner()
IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
ISSUER = "https://git.example.com"


def statement(n: int) -> dict[str, Any]:
    return {
        "_type": mt.IN_TOTO_STATEMENT_V1,
        "subject": [{"name": f"debian-12:1.0.{n}", "digest": {"sha256": f"{n:02x}" * 32}}],
        "predicateType": mt.COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }


def cli(*argv: str) -> Any:
    return RUNNER.invoke(app, ["authority", *argv])


def issuer_cn(bundle: bytes) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    raw = base64.b64decode(json.loads(bundle)["verificationMaterial"]["certificate"]["rawBytes"])
    cert = x509.load_der_x509_certificate(raw)
    return str(cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_bundles_signed_before_and_after_a_rotation_verify_in_both_verifiers(tmp_path: Path) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    fake = FakeIssuer()
    identity = identity_of(fake.claims())
    verifier = IdTokenVerifier([fake.url], client=fake.client())
    with served_authority(auth.directory, verifier) as url:
        before, _ = SigstoreSigner(url, fake.token()).sign_in_toto(statement(1))
        for kind in ("intermediate", "ctlog"):
            r = cli("keys", "rotate", str(auth.directory), "--kind", kind, "--json")
            assert r.exit_code == 0, r.output
            rotated = json.loads(r.stdout)
            assert rotated["retired"]["end"] and "end" not in rotated["current"]
        # the running server issues from the new intermediate with the new CT log key: no restart
        after, index = SigstoreSigner(url, fake.token()).sign_in_toto(statement(2))
        assert index == 1
    assert issuer_cn(before) == "diskci signing intermediate"
    assert issuer_cn(after) == "diskci signing intermediate 2"

    # the trusted root the CLI prints lists both keys of each rotated kind, the old one's window closed
    root_file = tmp_path / "verifier" / "trusted_root.json"
    r = cli("trusted-root", str(auth.directory), "--out", str(root_file))
    assert r.exit_code == 0, r.output
    printed = cli("trusted-root", str(auth.directory))
    assert json.loads(printed.stdout) == json.loads(root_file.read_bytes())
    assert root_file.read_bytes() == (auth.directory / "trusted_root.json").read_bytes()
    root = json.loads(root_file.read_bytes())
    for field in ("certificateAuthorities", "ctlogs"):
        windows = [(e.get("validFor") or e["publicKey"]["validFor"]) for e in root[field]]
        assert [("end" in w) for w in windows] == [True, False], field
        assert windows[1]["start"] <= windows[0]["end"]
    assert len(root["tlogs"]) == 1

    trusted = load_trusted_root(root_file)
    policy = IdentityPolicy(identity_regexp=re.escape(identity), issuer=fake.url)
    for n, bundle in ((1, before), (2, after)):
        digest = "sha256:" + f"{n:02x}" * 32
        verified = verify_bundle(bundle, subject_digest=digest, policy=policy, trusted_root=trusted)
        assert verified.identity == identity
        path = tmp_path / f"bundle-{n}.sigstore.json"
        path.write_bytes(bundle)
        verdict = verify_with_sigstore_js(path, root_file, identity=identity, issuer=fake.url)
        assert verdict == {"ok": True, "identity": identity, "issuer": fake.url}, (n, verdict)

    # the retired keys' private halves are gone; keys show names each key's window and status
    r = cli("keys", "show", str(auth.directory), "--json")
    assert r.exit_code == 0, r.output
    keys = json.loads(r.stdout)["keys"]
    assert [(k["kind"], k["status"]) for k in keys] == [
        ("root", "current"),
        ("intermediate", "retired"),
        ("intermediate", "current"),
        ("ctlog", "retired"),
        ("ctlog", "current"),
        ("tlog", "current"),
    ]
    assert all((k["valid_until"] is None) == (k["status"] == "current") for k in keys)
    assert not (auth.directory / "intermediate.key").exists() and not (auth.directory / "ctlog.key").exists()
    r = cli("keys", "show", str(auth.directory))
    assert "intermediate CA" in r.stdout and "retired" in r.stdout and keys[2]["id"][:16] in r.stdout


def test_a_certificate_of_the_retired_intermediate_is_still_logged(tmp_path: Path) -> None:
    """Issued just before a rotation, logged just after it: the log accepts it, and it verifies."""
    auth = SigningAuthority.init(tmp_path / "authority")

    class RotatingAfterIssuing:
        """A test double of a signing backend: the authority, rotating its intermediate right after
        issuing the certificate and before the entry is logged."""

        def issue_certificate(self, key: Any, *, identity: str, issuer: str | None = None) -> Any:
            cert = auth.issue_certificate(key, identity=identity, issuer=issuer)
            auth.rotate_key("intermediate")
            return cert

        def log_dsse(self, envelope: dict[str, Any], certificate: Any) -> Any:
            return auth.log_dsse(envelope, certificate)

    data, entry = sign_statement(
        statement(3), authority=RotatingAfterIssuing(), identity=IDENTITY, issuer=ISSUER
    )
    assert entry.log_index == 0 and issuer_cn(data) == "diskci signing intermediate"
    assert auth.intermediate_cert.subject.rfc4514_string().startswith("CN=diskci signing intermediate 2")
    policy = IdentityPolicy(identity_regexp=re.escape(IDENTITY), issuer=ISSUER)
    trusted = load_trusted_root(auth.directory / "trusted_root.json")
    verify_bundle(data, subject_digest="sha256:" + "03" * 32, policy=policy, trusted_root=trusted)


def test_the_log_key_and_the_root_are_not_rotated(tmp_path: Path) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    before = (auth.directory / "keys.json").read_bytes()
    for kind, words in (("tlog", "a new log key means a new log"), ("root", "rotatable keys are")):
        r = cli("keys", "rotate", str(auth.directory), "--kind", kind)
        assert isinstance(r.exception, UsageError) and words in str(r.exception), r.output
    assert (auth.directory / "keys.json").read_bytes() == before


def _signed_log(tmp_path: Path, entries: int) -> SigningAuthority:
    auth = SigningAuthority.init(tmp_path / "authority")
    for n in range(entries):
        sign_statement(statement(n), authority=auth, identity=IDENTITY, issuer=ISSUER)
    return auth


def _copy_with(auth: SigningAuthority, tmp_path: Path, name: str, line: int, change: Any) -> Path:
    copy = tmp_path / name
    shutil.copytree(auth.directory, copy)
    log = copy / "log" / "entries.jsonl"
    lines = log.read_text().splitlines()
    rec = json.loads(lines[line])
    change(rec)
    lines[line] = json.dumps(rec, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    return copy


def test_log_verify_audits_every_leaf_and_checkpoint(tmp_path: Path) -> None:
    auth = _signed_log(tmp_path, 5)
    r = cli("log", "verify", str(auth.directory), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["ok"] and summary["entries"] == summary["tree_size"] == 5
    assert summary["checkpoints_checked"] == 5 and summary["kinds"] == {"dsse": 5}
    assert summary["root_hash"] == auth.log.root_hash().hex()
    r = cli("log", "verify", str(auth.directory))
    assert r.exit_code == 0 and "5 entries, 5 checkpoints checked, consistent" in r.stdout

    # a leaf changed (another valid-looking body in entry 2): named, with what was expected
    other = json.loads(Path(auth.log.path).read_text().splitlines()[4])["body"]

    def swap_body(rec: dict[str, Any]) -> None:
        rec["body"] = other

    leaf = _copy_with(auth, tmp_path, "leaf", 2, swap_body)
    r = cli("log", "verify", str(leaf), "--json")
    assert r.exit_code == 1, r.output
    verdict = json.loads(r.stdout)
    assert (verdict["ok"], verdict["entry"]) == (False, 2)
    assert "checkpoint of tree size 3 (acknowledged with entry 2)" in verdict["error"]
    assert verdict["expected"].startswith("root ")

    # a checkpoint changed (the root acknowledged with entry 3)
    def spoil_root(rec: dict[str, Any]) -> None:
        rec["root"] = "00" * 32

    checkpoint = _copy_with(auth, tmp_path, "checkpoint", 3, spoil_root)
    good_root = json.loads(Path(auth.log.path).read_text().splitlines()[3])["root"]
    done = subprocess.run(
        [sys.executable, "-m", "diskci.cli.main", "authority", "log", "verify", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done
    message = " ".join(done.stderr.split())
    assert "the checkpoint of tree size 4 (acknowledged with entry 3) has root " + "00" * 32 in message
    assert f"expected: root {good_root}" in message

    # a record out of sequence, and a body that is not a canonical entry
    def renumber(rec: dict[str, Any]) -> None:
        rec["index"] = 7

    def not_canonical(rec: dict[str, Any]) -> None:
        rec["body"] = base64.b64encode(b'{"kind": "dsse", "apiVersion": "0.0.1"}').decode()

    for name, line, change, words in (
        ("sequence", 1, renumber, "entry 1 (line 2) says it is entry 7"),
        ("canonical", 0, not_canonical, "entry 0 is not a canonical dsse/hashedrekord 0.0.1 body"),
    ):
        r = cli("log", "verify", str(_copy_with(auth, tmp_path, name, line, change)), "--json")
        assert r.exit_code == 1 and words in json.loads(r.stdout)["error"], (name, r.output)


def test_a_damaged_record_is_refused_not_cut_off(tmp_path: Path) -> None:
    """Only an unterminated last line (an append cut short) is dropped; a damaged whole record stops
    the log from growing past it instead of silently losing the acknowledged entries after it."""
    auth = _signed_log(tmp_path, 3)
    path = Path(auth.log.path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]
    path.write_bytes(b"\n".join(lines))
    size = path.stat().st_size
    with pytest.raises(SupplyChainError, match="record 1 is damaged"):
        sign_statement(statement(9), authority=auth, identity=IDENTITY, issuer=ISSUER)
    assert path.stat().st_size == size
    r = cli("log", "verify", str(auth.directory))
    assert isinstance(r.exception, LogInconsistent) and r.exception.entry == 1
    assert "entry 1 (line 2) is malformed" in r.exception.message


def test_a_directory_made_before_keys_json_reads_and_rotates(tmp_path: Path) -> None:
    auth = _signed_log(tmp_path, 1)
    before = auth.trusted_root_json()
    (auth.directory / "keys.json").unlink()  # as `authority init` left it before key rotation existed
    legacy = SigningAuthority.open(auth.directory)
    assert legacy.trusted_root_json() == before
    r = cli("keys", "show", str(auth.directory), "--json")
    assert r.exit_code == 0 and {k["status"] for k in json.loads(r.stdout)["keys"]} == {"current"}
    retired, new = legacy.rotate_key("intermediate")
    assert retired.key_file is None and not (auth.directory / "intermediate.key").exists()
    assert (auth.directory / str(new.key_file)).stat().st_mode & 0o777 == 0o600
    data, entry = sign_statement(statement(4), authority=legacy, identity=IDENTITY, issuer=ISSUER)
    assert entry.log_index == 1 and issuer_cn(data) == "diskci signing intermediate 2"
