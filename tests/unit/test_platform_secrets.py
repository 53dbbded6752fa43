"""Secrets at rest and the secret key: encryption, purpose binding, and refusing unsafe keys."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from diskci.platform.secrets import SecretBox, SecretDecryptionFailed, fingerprint, generate_secret
from diskci.platform.settings import InsecureSettings, PlatformSettings

KEY = b"k" * 48


def test_round_trip_and_fresh_nonces() -> None:
    box = SecretBox(key=KEY)
    a = box.encrypt("hunter2", purpose="p")
    b = box.encrypt("hunter2", purpose="p")
    assert a != b and "hunter2" not in a
    assert box.decrypt(a, purpose="p") == "hunter2"


def test_wrong_key_purpose_or_tampering_fails() -> None:
    token = SecretBox(key=KEY).encrypt("s3cret", purpose="disk_image_webhook:1")
    with pytest.raises(SecretDecryptionFailed, match="could not be decrypted"):
        SecretBox(key=b"z" * 48).decrypt(token, purpose="disk_image_webhook:1")
    with pytest.raises(SecretDecryptionFailed):
        SecretBox(key=KEY).decrypt(token, purpose="disk_image_webhook:2")
    raw = bytearray(base64.urlsafe_b64decode(token.partition(".")[2]))
    raw[20] ^= 1  # one bit of the ciphertext
    flipped = "v1." + base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(SecretDecryptionFailed):
        SecretBox(key=KEY).decrypt(flipped, purpose="disk_image_webhook:1")
    with pytest.raises(SecretDecryptionFailed, match="unknown format"):
        SecretBox(key=KEY).decrypt("v0.abc", purpose="disk_image_webhook:1")


def test_generated_secrets_and_fingerprints() -> None:
    s1, s2 = generate_secret(), generate_secret()
    assert s1 != s2 and len(s1) >= 43
    assert fingerprint(s1) == fingerprint(s1) != fingerprint(s2)
    assert fingerprint(s1).startswith("sha256:") and s1 not in fingerprint(s1)


def test_development_creates_a_private_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISKCI_SECRET_KEY", raising=False)
    settings = PlatformSettings(state_dir=tmp_path / "state", environment="development")
    key = settings.resolve_secret_key()
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert PlatformSettings(state_dir=tmp_path / "state").resolve_secret_key() == key


def test_production_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISKCI_SECRET_KEY", raising=False)
    with pytest.raises(InsecureSettings, match="no secret key"):
        PlatformSettings(state_dir=tmp_path, environment="production").resolve_secret_key()
    assert not (tmp_path / "secret.key").exists()


def test_key_file_readable_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISKCI_SECRET_KEY", raising=False)
    path = tmp_path / "secret.key"
    path.write_text("x" * 64)
    os.chmod(path, 0o644)
    with pytest.raises(InsecureSettings, match="mode 0644"):
        PlatformSettings(state_dir=tmp_path, environment="production").resolve_secret_key()


@pytest.mark.parametrize(("key", "message"), [("changeme", "well-known"), ("short-key", "it needs 32")])
def test_weak_keys_are_refused(key: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISKCI_SECRET_KEY", key)
    with pytest.raises(InsecureSettings, match=message):
        PlatformSettings()


def test_defaults_live_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DISKCI_DATABASE_URL", "DISKCI_QUEUE_URL", "DISKCI_PUBLIC_BASE_URL", "DISKCI_BLOB_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DISKCI_STATE_DIR", str(tmp_path))
    s = PlatformSettings()
    assert s.database_url == f"sqlite:///{tmp_path}/platform.db"
    assert s.queue_url == f"sqlite:///{tmp_path}/queue.db"
    assert s.blob_dir == tmp_path / "blobs"
    assert s.public_base_url == "http://127.0.0.1:8480"
