"""Secrets at rest: AES-256-GCM under a key derived (HKDF-SHA256) from the platform's secret key.

Ciphertexts are text, ``v1.<base64url(nonce || ciphertext+tag)>``, bound to a purpose string (the
associated data) so a value encrypted for one column cannot be replayed into another.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from diskci.errors import PlatformError
from diskci.platform.settings import InsecureSettings

_VERSION = "v1"
_NONCE_BYTES = 12
MIN_KEY_BYTES = 16


class SecretDecryptionFailed(PlatformError):
    """A stored secret could not be decrypted: the secret key changed, or the value was altered."""

    http_status = 500


class SecretBox:
    """Encrypts and decrypts short secrets (webhook secrets) for storage in the database."""

    def __init__(self, *, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise InsecureSettings(
                f"the secret key is too short ({len(key)} bytes; at least {MIN_KEY_BYTES} are needed)"
            )
        self._aead = AESGCM(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"diskci secrets at rest v1").derive(
                key
            )
        )

    def encrypt(self, plaintext: str, *, purpose: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return f"{_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, purpose: str) -> str:
        version, _, body = token.partition(".")
        if version != _VERSION or not body:
            raise SecretDecryptionFailed(f"stored secret has unknown format {version!r}")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            opened = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], purpose.encode())
        except (InvalidTag, ValueError) as exc:
            raise SecretDecryptionFailed(
                f"stored secret ({purpose}) could not be decrypted",
                hint="Was DISKCI_SECRET_KEY or the state directory's key file changed?",
            ) from exc
        return opened.decode()


def generate_secret() -> str:
    """A new webhook secret: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(32)


def fingerprint(secret: str) -> str:
    """A short public name for a secret (``sha256:<first 16 hex>``), safe to show and log."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]
