"""Publication references: ``host[:port]/repo/sub:tag`` (or ``@sha256:…``) and ``oci-layout:PATH:tag``.

Public API: ``Reference.parse(text)`` gives an immutable value object; ``str(ref)`` gives it back.
Registry references follow the distribution spec's grammar
(https://github.com/distribution/reference/blob/main/reference.go): the first path component is a
host when it has a ``.`` or ``:`` or is ``localhost``; repository components are lower-case
``[a-z0-9]+(?:[._-][a-z0-9]+)*`` joined by ``/``; tags are ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from diskci.errors import UsageError

LAYOUT_PREFIX = "oci-layout:"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?$")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]"})


class InvalidReference(UsageError):
    """A reference that cannot be parsed; the message says which part is wrong."""


@dataclass(frozen=True)
class Reference:
    """Where a publication lives: a registry repository or an OCI image layout directory."""

    host: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None
    layout_path: Path | None = None

    @property
    def is_layout(self) -> bool:
        return self.layout_path is not None

    @property
    def is_loopback(self) -> bool:
        if self.host is None:
            return False
        name = self.host.rsplit(":", 1)[0] if self.host.count(":") == 1 else self.host
        return name in _LOOPBACK

    @property
    def target(self) -> str:
        """The tag or digest this reference points at."""
        if self.digest:
            return self.digest
        if self.tag:
            return self.tag
        raise InvalidReference(f"{self}: needs a tag (':<version>') or a digest ('@sha256:...')")

    def at(self, tag_or_digest: str) -> Reference:
        """This repository at ``tag_or_digest``."""
        if tag_or_digest.startswith("sha256:"):
            return replace(self, tag=None).with_digest(tag_or_digest)
        return self.with_tag(tag_or_digest)

    def with_tag(self, tag: str) -> Reference:
        _check_tag(tag, str(self))
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        if not _DIGEST.match(digest):
            raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
        return replace(self, digest=digest)

    def __str__(self) -> str:
        if self.layout_path is not None:
            base = f"{LAYOUT_PREFIX}{self.layout_path}"
        else:
            base = f"{self.host}/{self.repository}"
        if self.tag:
            base += f":{self.tag}"
        if self.digest:
            base += f"@{self.digest}"
        return base

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text``; raises ``InvalidReference`` naming what is wrong."""
        if not text or text != text.strip():
            raise InvalidReference(f"invalid reference {text!r}: empty or surrounded by spaces")
        if text.startswith(LAYOUT_PREFIX):
            return cls._parse_layout(text)
        return cls._parse_registry(text)

    @classmethod
    def _parse_layout(cls, text: str) -> Reference:
        rest = text[len(LAYOUT_PREFIX) :]
        digest = None
        if "@" in rest:
            rest, digest = rest.rsplit("@", 1)
        path, sep, tag = rest.rpartition(":")
        if not sep or "/" in tag:
            path, tag = rest, ""
        if not path:
            raise InvalidReference(f"invalid reference {text!r}: expected oci-layout:PATH[:TAG]")
        if tag:
            _check_tag(tag, text)
        ref = cls(host=None, repository=Path(path).name or "layout", tag=tag or None, layout_path=Path(path))
        return ref.with_digest(digest) if digest else ref

    @classmethod
    def _parse_registry(cls, text: str) -> Reference:
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
        host, slash, path = rest.partition("/")
        if not slash or not ("." in host or ":" in host or host == "localhost"):
            raise InvalidReference(
                f"invalid reference {text!r}: expected HOST[:PORT]/REPOSITORY[:TAG] "
                "(the first part must be a registry host such as registry.example.com or 127.0.0.1:5000)"
            )
        if not _HOST.match(host):
            raise InvalidReference(f"invalid reference {text!r}: bad registry host {host!r}")
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = path.rsplit(":", 1)
            _check_tag(tag, text)
        if not _REPOSITORY.match(path):
            raise InvalidReference(
                f"invalid reference {text!r}: bad repository {path!r} "
                "(lower-case letters, digits, '.', '_', '-', separated by '/')"
            )
        ref = cls(host=host, repository=path, tag=tag)
        return ref.with_digest(digest) if digest else ref


def _check_tag(tag: str, text: str) -> None:
    if not _TAG.match(tag):
        raise InvalidReference(
            f"invalid reference {text!r}: bad tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)"
        )
