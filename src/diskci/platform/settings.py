"""The platform's settings, in one pydantic-settings class read from ``DISKCI_*`` environment variables.

Everything lives under the state directory unless given explicitly: the SQLite database, the huey
SQLite queue, the blob cache and the secret key file. The state directory is created 0700 and its files
0600 (``platform.statefiles``). The secret key comes from ``DISKCI_SECRET_KEY`` or from a 0600 key file,
``DISKCI_SECRET_KEY_FILE`` (default: ``secret.key`` in the state directory); only the ``development``
environment may create that file on first use, ``production`` refuses a key file in the state
directory (beside the database it protects), and no environment accepts a well-known or short key.

``public_base_url`` is where nodes and CI reach the platform: every URL the netboot scripts and the
webhook provisioning hand out starts with it (never with a request's ``Host``). By default it is
``http://<bind_host>:<bind_port>``, with this machine's name for a wildcard bind address.
``ci_base_url`` (default: the same) is where CI workers register and where the OIDC issuer of job ID
tokens is: it differs when nodes reach the platform by another address than the workers do (QEMU's
user network: nodes see 10.0.2.2, local workers 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from diskci.errors import UsageError
from diskci.platform.statefiles import private_dir, private_file

KEY_FILE_NAME = "secret.key"
MIN_KEY_LENGTH = 32
WELL_KNOWN_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "diskci", "development"})
EVENT_RETENTION_DAYS = 90  # events older than this are pruned by the daily retention run
NETBOOT_REPORT_EVENTS_MAX = 100_000  # the newest boot-report events kept (older ones pruned on insert)


class InsecureSettings(UsageError):
    """A secret that must not be used (well known, too short, or readable by others)."""


# What a URL in an iPXE script may hold: no spaces, no ${...}, no & | ; # quotes (see services.netboot).
_URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/\[\]%-]+$")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


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
    # What CI workers and the signing authority reach the platform at: runner registration, the OIDC
    # issuer of job ID tokens (and so the signing identity's host). Default: public_base_url.
    ci_base_url: str = ""
    blob_cache_dir: Path | None = None  # default: <state_dir>/blobs
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None  # default: <state_dir>/secret.key (refused in production)
    webhook_tolerance_seconds: int = 300
    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=0)
    api_max_body_bytes: int = Field(default=256 * 1024, ge=0)  # action routes and all other routes
    webhook_grace_seconds: int = 24 * 3600  # how long a rotated-out webhook secret stays valid
    queue_workers: int = 2  # queue consumer threads inside ``serve``
    task_lease_seconds: int = Field(default=60, ge=1)  # a running task not renewed this long is recovered
    retention_hour: int = 3  # UTC hour of the daily retention run
    retention_minute: int = 0
    event_retention_days: int = Field(default=EVENT_RETENTION_DAYS, ge=1, le=36_500)
    netboot_report_events_max: int = Field(default=NETBOOT_REPORT_EVENTS_MAX, ge=100, le=1_000_000_000)
    mcp_read_only: bool = False  # /mcp offers only the read-only tools (``serve --mcp-read-only``)
    # Secure Boot (diskci.platform.secureboot): the fleet key that signs verified UKIs lives in files,
    # never in the database; default <state_dir>/secureboot/db.key and db.crt. ``secureboot_signer``
    # names another signer ("package.module:factory", called with these settings), e.g. an HSM's.
    secureboot_key_file: Path | None = None
    secureboot_cert_file: Path | None = None
    secureboot_signer: str = ""
    secureboot_validity_days: int = Field(default=14, ge=1, le=3650)  # a signed UKI's boot window
    # The ec2 compute provider (diskci.platform.providers.ec2); credentials come from boto3's own chain.
    ec2_endpoint_url: str = ""  # another EC2 endpoint: a VPC endpoint, or a test server
    ec2_image_id: str = ""  # the workers' AMI: "ami-..." everywhere, or "us-east-1=ami-...,eu-west-1=ami-..."

    @model_validator(mode="after")
    def _fill_defaults(self) -> PlatformSettings:
        self.state_dir = self.state_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'platform.db'}"
        if not self.queue_url:
            self.queue_url = f"sqlite:///{self.state_dir / 'queue.db'}"
        if not self.public_base_url:
            self.public_base_url = f"http://{_url_host(self.bind_host)}:{self.bind_port}"
        self.public_base_url = _check_base_url(self.public_base_url.rstrip("/"))
        self.ci_base_url = _check_base_url((self.ci_base_url or self.public_base_url).rstrip("/"))
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
        """The secret key file: ``secret_key_file``, or ``secret.key`` in the state directory."""
        if self.secret_key_file is not None:
            return self.secret_key_file.expanduser()
        return self.state_dir / KEY_FILE_NAME

    def _key_beside_state(self, path: Path) -> bool:
        """Whether ``path`` lies in the state directory (with the database and the queue)."""
        state = self.state_dir.resolve()
        return path.resolve().parent == state or state in path.resolve().parents

    def resolve_secret_key(self) -> bytes:
        """The key that encrypts secrets at rest: the environment's, or the key file's.

        In development a missing key file is created (0600, 32 random bytes); elsewhere it is an error,
        and in production a key file in the state directory is refused.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.key_file
        hint = "Generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise InsecureSettings(
                    f"{path} has mode {mode:04o}: the secret key file must be readable by its owner only",
                    hint=f"Run: chmod 600 {path}",
                )
        if self.environment == "production" and self._key_beside_state(path):
            raise InsecureSettings(
                f"no secret key: in production the key may not live in the state directory ({path},"
                " beside the database it protects); set DISKCI_SECRET_KEY, or DISKCI_SECRET_KEY_FILE"
                " to a 0600 file elsewhere",
                hint=hint,
            )
        if path.exists():
            key = path.read_text().strip()
            _check_key(key, str(path))
            return key.encode()
        if self.environment != "development":
            raise InsecureSettings(
                f"no secret key: set DISKCI_SECRET_KEY or create {path} (mode 0600)", hint=hint
            )
        private_dir(path.parent)
        key = secrets.token_urlsafe(48)
        try:
            fd = private_file(path, exclusive=True)
        except FileExistsError:  # another process made it first: use theirs
            return self.resolve_secret_key()
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        return key.encode()


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL: a wildcard bind address becomes this machine's name."""
    if host in _WILDCARD_HOSTS:
        return socket.getfqdn() or "localhost"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or not _URL_CHARS.fullmatch(url.split("://", 1)[-1])
    ):
        raise UsageError(
            f"DISKCI_PUBLIC_BASE_URL {url[:200]!r} is not a plain http(s) base URL",
            hint="e.g. http://netboot.example:8480 or https://diskci.example/platform"
            " (no query, no credentials, no spaces or $ & | ; # quotes)",
        )
    return url


def _check_key(key: str, source: str) -> None:
    if key.strip().lower() in WELL_KNOWN_SECRETS:
        raise InsecureSettings(f"{source}: refusing a well-known secret key")
    if len(key.strip()) < MIN_KEY_LENGTH:
        raise InsecureSettings(
            f"{source}: the secret key has {len(key.strip())} characters, it needs {MIN_KEY_LENGTH}"
        )
