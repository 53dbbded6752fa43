"""The platform's settings, in one pydantic-settings class read from ``DISKCI_*`` environment variables.

Everything lives under the state directory unless given explicitly: the SQLite database, the huey
SQLite queue, the blob cache and the secret key file. The secret key comes from ``DISKCI_SECRET_KEY``
or from a 0600 key file in the state directory; only the ``development`` environment may create that
file on first use, and no environment accepts a well-known or short key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from diskci.errors import UsageError

KEY_FILE_NAME = "secret.key"
MIN_KEY_LENGTH = 32
WELL_KNOWN_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "diskci", "development"})


class InsecureSettings(UsageError):
    """A secret that must not be used (well known, too short, or readable by others)."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "diskci"


class PlatformSettings(BaseSettings):
    """Settings of ``diskci platform serve``/``consume``; build one and pass it to the factories
    (``create_app``, ``TaskQueue``); nothing reads them from module globals."""

    model_config = SettingsConfigDict(env_prefix="DISKCI_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    state_dir: Path = Field(default_factory=default_state_dir)
    database_url: str = ""  # default: sqlite:///<state_dir>/platform.db
    queue_url: str = ""  # default: sqlite:///<state_dir>/queue.db (huey SqliteHuey); redis://... for Redis
    bind_host: str = "127.0.0.1"
    bind_port: int = 8480
    public_base_url: str = ""  # default: http://<bind_host>:<bind_port>; what netboot clients reach
    blob_cache_dir: Path | None = None  # default: <state_dir>/blobs
    secret_key: SecretStr | None = None
    webhook_tolerance_seconds: int = 300
    webhook_max_body_bytes: int = 1024 * 1024
    webhook_grace_seconds: int = 24 * 3600  # how long a rotated-out webhook secret stays valid
    queue_workers: int = 2  # queue consumer threads inside ``serve``
    retention_hour: int = 3  # UTC hour of the daily retention run
    retention_minute: int = 0

    @model_validator(mode="after")
    def _fill_defaults(self) -> PlatformSettings:
        self.state_dir = self.state_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'platform.db'}"
        if not self.queue_url:
            self.queue_url = f"sqlite:///{self.state_dir / 'queue.db'}"
        if not self.public_base_url:
            self.public_base_url = f"http://{self.bind_host}:{self.bind_port}"
        self.public_base_url = self.public_base_url.rstrip("/")
        if self.blob_cache_dir is None:
            self.blob_cache_dir = self.state_dir / "blobs"
        if self.secret_key is not None:
            _check_key(self.secret_key.get_secret_value(), "DISKCI_SECRET_KEY")
        return self

    @property
    def blob_dir(self) -> Path:
        """The blob cache directory (always set after validation)."""
        assert self.blob_cache_dir is not None
        return self.blob_cache_dir

    @property
    def key_file(self) -> Path:
        return self.state_dir / KEY_FILE_NAME

    def resolve_secret_key(self) -> bytes:
        """The key that encrypts secrets at rest: the environment's, or the state directory's key file.

        In development a missing key file is created (0600, 32 random bytes); elsewhere it is an error.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.key_file
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise InsecureSettings(
                    f"{path} has mode {mode:04o}: the secret key file must be readable by its owner only",
                    hint=f"Run: chmod 600 {path}",
                )
            key = path.read_text().strip()
            _check_key(key, str(path))
            return key.encode()
        if self.environment != "development":
            raise InsecureSettings(
                f"no secret key: set DISKCI_SECRET_KEY or create {path} (mode 0600)",
                hint="Generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'",
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return self.resolve_secret_key()
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        return key.encode()


def _check_key(key: str, source: str) -> None:
    if key.strip().lower() in WELL_KNOWN_SECRETS:
        raise InsecureSettings(f"{source}: refusing a well-known secret key")
    if len(key.strip()) < MIN_KEY_LENGTH:
        raise InsecureSettings(
            f"{source}: the secret key has {len(key.strip())} characters, it needs {MIN_KEY_LENGTH}"
        )
