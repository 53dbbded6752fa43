"""The platform's content-addressed blob cache: every verified artifact byte the platform serves.

Layout: ``<root>/sha256/<first two hex>/<remaining 62 hex>``. A blob enters the cache only whole and
only after its sha256 (and, when asked, its fs-verity digest) matched: it is streamed into a
temporary file under ``<root>/tmp`` (named ``<hex>.<pid>.<random>.part``), fsynced and renamed into
place, so a process killed mid-download leaves at most a temporary file, which
``remove_orphaned_temporaries`` removes when the platform starts (its process is gone) and
``collect_garbage`` removes once stale. Entries are never counted:
garbage collection keeps exactly the digests the database still references.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from diskci.errors import InvalidRequest, VerificationFailed
from diskci.formats.fsverity import FsVerityHasher

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STALE_TMP_SECONDS = 3600


def _owner_alive(name: str) -> bool:
    """Whether the process a temporary file's name carries (``<what>.<pid>.…``) is alive on this host."""
    parts = name.split(".")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class InvalidDigest(InvalidRequest):
    """A blob was named by something other than a sha256 digest."""


def normalize_digest(digest: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` → ``<hex>``; anything else is refused."""
    hexpart = digest.removeprefix("sha256:")
    if not _HEX64.fullmatch(hexpart):
        raise InvalidDigest(f"not a sha256 digest: {digest!r}")
    return hexpart


@dataclass(frozen=True)
class GcResult:
    removed: list[str]
    kept: int
    freed_bytes: int


class BlobCache:
    """A directory of blobs named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"

    def path(self, digest: str) -> Path:
        hexpart = normalize_digest(digest)
        return self._blobs / hexpart[:2] / hexpart[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_chunks(
        self, digest: str, chunks: Iterable[bytes], *, size: int | None = None, fsverity: str | None = None
    ) -> Path:
        """Store the bytes of ``chunks`` as ``digest``; refuse them if a digest or the size differs.

        Raises VerificationFailed(``digest_mismatch`` | ``fsverity_mismatch``); nothing is left behind.
        """
        hexpart = normalize_digest(digest)
        tmp = self.staging_path(hexpart)
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.adopt(hexpart, tmp, size=size, fsverity=fsverity)

    def staging_path(self, digest: str) -> Path:
        """A fresh path in the cache's temporary directory (same file system) to download into."""
        hexpart = normalize_digest(digest)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{hexpart[:12]}.{os.getpid()}.", suffix=".part", dir=self._tmp)
        os.close(fd)
        return Path(name)

    def temporary_prefix(self, what: str) -> str:
        """A ``tempfile`` prefix for other temporary files in the cache's directory: it names this
        process, so ``remove_orphaned_temporaries`` can tell whose it is."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        return f"{what}.{os.getpid()}."

    def remove_orphaned_temporaries(self) -> list[Path]:
        """Remove the temporary files whose process is gone (``.part`` downloads, ``.tmp-*`` files, any
        file not naming a live process of this host); returns what was removed."""
        removed: list[Path] = []
        if not self._tmp.is_dir():
            return removed
        for f in self._tmp.iterdir():
            if _owner_alive(f.name):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                f.unlink()
                removed.append(f)
        return removed

    def adopt(
        self, digest: str, staged: Path, *, size: int | None = None, fsverity: str | None = None
    ) -> Path:
        """Rename a staged file into the cache once its sha256, size and fs-verity digest are checked.

        The staged file is consumed either way (renamed, or removed when a check fails).
        """
        hexpart = normalize_digest(digest)
        dest = self.path(hexpart)
        try:
            sha = hashlib.sha256()
            verity = FsVerityHasher() if fsverity else None
            written = 0
            with open(staged, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
                    if verity is not None:
                        verity.update(chunk)
                    written += len(chunk)
                os.fsync(f.fileno())  # the bytes are on disk before the name says they are there
            got = sha.hexdigest()
            if got != hexpart:
                raise VerificationFailed("digest_mismatch", f"blob sha256:{hexpart} has sha256:{got}")
            if size is not None and written != size:
                raise VerificationFailed(
                    "digest_mismatch", f"blob sha256:{hexpart} is {written} bytes, the manifest says {size}"
                )
            if verity is not None and fsverity is not None:
                got_verity = verity.hexdigest()
                if got_verity != fsverity:
                    raise VerificationFailed(
                        "fsverity_mismatch",
                        f"blob sha256:{hexpart} has fs-verity digest {got_verity}, "
                        f"build.json says {fsverity}",
                    )
            os.chmod(staged, 0o644)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staged.replace(dest)
        finally:
            staged.unlink(missing_ok=True)
        return dest

    def put_bytes(self, digest: str, data: bytes, *, fsverity: str | None = None) -> Path:
        return self.put_chunks(digest, [data], size=len(data), fsverity=fsverity)

    def check_fsverity(self, digest: str, expected: str) -> None:
        """Recompute the fs-verity digest of a cached blob (cache hits are checked too)."""
        hasher = FsVerityHasher()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
        got = hasher.hexdigest()
        if got != expected:
            raise VerificationFailed(
                "fsverity_mismatch", f"blob {digest} has fs-verity digest {got}, build.json says {expected}"
            )

    def digests(self) -> Iterator[str]:
        if not self._blobs.is_dir():
            return
        for sub in self._blobs.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sub.iterdir():
                name = sub.name + f.name
                if _HEX64.fullmatch(name):
                    yield name

    def remove(self, digest: str) -> int:
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def collect_garbage(
        self, referenced: Iterable[str], *, dry_run: bool = False, min_age_seconds: float = 3600
    ) -> GcResult:
        """Remove every blob whose digest is not in ``referenced``, and stale temporary files.

        Blobs younger than ``min_age_seconds`` are kept: a processor may have cached them for a
        publication it has not committed yet.
        """
        keep = {d[7:] if d.startswith("sha256:") else d for d in referenced}
        removed: list[str] = []
        kept = 0
        freed = 0
        young = time.time() - min_age_seconds
        for d in list(self.digests()):
            if d in keep:
                kept += 1
                continue
            try:
                if self.path(d).stat().st_mtime > young:
                    kept += 1
                    continue
            except FileNotFoundError:
                continue
            removed.append(d)
            freed += self.path(d).stat().st_size if dry_run else self.remove(d)
        if not dry_run and self._tmp.is_dir():
            cutoff = time.time() - _STALE_TMP_SECONDS
            for f in self._tmp.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if f.stat().st_mtime < cutoff:
                        f.unlink()
        return GcResult(removed=sorted(removed), kept=kept, freed_bytes=freed)
