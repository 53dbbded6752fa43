"""The build cache: every stage's outputs kept under a key taken over exactly what the stage reads.

An entry is a directory ``<cache>/<stage>/<key>/`` holding the output files (and directories) and
``meta.json``: for every file its size, mode and sha256, the key's inputs, and what the stage recorded in
build.json (its artifacts, tool versions, record fields), so a hit restores the same bytes and the same
records. The key is the sha256 of the inputs' canonical JSON, and the inputs hold the digests of the
artifacts the stage reads: an entry is found by the content it was made from, and its files are checked
against their recorded sha256 before anything of them is used.

Shared safely by concurrent builds (two CI jobs on one worker):
- an entry is assembled in a temporary directory beside it and renamed into place, so nobody ever sees
  a partial entry; it is restored into temporary paths, verified, then renamed onto the outputs;
- ``lock(key)`` is an exclusive ``flock`` per key (``<cache>/locks/``): the second build of the same key
  waits, then finds the entry the first one stored;
- a damaged entry (a file of the wrong size or sha256) is discarded and the stage rebuilt.

Files go in and out by hard link when cache and output share a filesystem (outputs are only ever
replaced by rename, never changed in place), else by copy. The cache is bounded: ``prune`` removes the
least recently used entries (an entry's directory mtime is its last use) down to a size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskci.atomic import atomic_path
from diskci.canonical import canonical_json
from diskci.errors import CacheError, UsageError
from diskci.manifest import sha256_file
from diskci.spec import Architecture, PlatformSpec

log = logging.getLogger(__name__)

META = "meta.json"
LOCKS = "locks"
# Bumped whenever the way diskci turns a spec into a root filesystem changes (hooks, options).
ROOTFS_RECIPE = "rootfs-v2"
# The spec fields a root filesystem is made from (not the kernel command line, version or signing).
ROOTFS_SPEC_FIELDS = (
    "distribution",
    "suite",
    "mirror",
    "components",
    "variant",
    "packages",
    "arch_packages",
    "kernel_package",
    "exclude_paths",
    "include_paths",
    "hostname",
    "files",
    "customize_hooks",
)
_STALE_TMP_SECONDS = 24 * 3600
# What ``diskci build`` prunes the cache to afterwards (``--cache-max-size``): about ten full builds.
DEFAULT_MAX_SIZE = "20G"


def canonical_digest(data: Any) -> str:
    """sha256 of the canonical JSON form of ``data`` (``diskci.canonical.canonical_json``)."""
    return hashlib.sha256(canonical_json(data)).hexdigest()


def rootfs_key_inputs(
    *,
    spec: PlatformSpec,
    arch: Architecture,
    mirror: str,
    release: bytes,
    mmdebstrap_version: str,
    source_date_epoch: int,
    files: Mapping[str, str] | None = None,
    command: Sequence[str] = (),
) -> dict[str, Any]:
    """What a root filesystem depends on, as plain data (recorded in build.json and the entry)."""
    normalized = spec.normalized()
    return {
        "recipe": ROOTFS_RECIPE,
        "spec": {f: normalized[f] for f in ROOTFS_SPEC_FIELDS},
        "architecture": arch.value,
        "mirror": mirror,
        "release_sha256": hashlib.sha256(release).hexdigest(),
        "mmdebstrap": mmdebstrap_version,
        "source_date_epoch": source_date_epoch,
        # sha256 of every file the spec copies in, by its spec-relative path
        "files": dict(sorted((files or {}).items())),
        # how diskci runs mmdebstrap (options and hooks, with placeholder paths): a new recipe rebuilds
        "command": list(command),
    }


def rootfs_key(**inputs: Any) -> str:
    """The cache key of a root filesystem: see ``rootfs_key_inputs`` for the arguments."""
    return canonical_digest(rootfs_key_inputs(**inputs))


# --- sizes ---------------------------------------------------------------------------------------

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"20G"``, ``"512MiB"``, ``"1.5T"``, ``"1000"`` → bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"not a size: {text!r} (examples: 20G, 512M, 1.5T, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


# --- placing files -------------------------------------------------------------------------------


def place(src: Path, dest: Path) -> str:
    """Put ``src`` at ``dest`` (atomically): a hard link when possible, else a copy. Returns which."""
    with atomic_path(dest) as tmp:
        tmp.unlink()
        _link_or_copy(src, tmp)
        how = "hardlink" if os.stat(tmp).st_ino == os.stat(src).st_ino else "copy"
    return how


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
        shutil.copymode(src, dest)


def _tree_meta(root: Path) -> dict[str, Any]:
    """Every directory and file below ``root``: relative path → its kind, mode (and size)."""
    entries: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for d in dirnames:
            rel = (base / d).relative_to(root).as_posix()
            entries[rel] = {"type": "dir", "mode": stat.S_IMODE((base / d).lstat().st_mode)}
        for f in sorted(filenames):
            st = (base / f).lstat()
            if not stat.S_ISREG(st.st_mode):
                raise CacheError(f"{base / f}: only regular files and directories can be cached")
            rel = (base / f).relative_to(root).as_posix()
            entries[rel] = {"type": "file", "mode": stat.S_IMODE(st.st_mode), "size": st.st_size}
    return entries


def _each(func: Callable[[str], None], items: Sequence[str]) -> None:
    """``func`` over ``items`` on a few threads (hashing many files: hashlib lets go of the GIL)."""
    if len(items) < 64:
        for item in items:
            func(item)
        return
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(func, items):  # re-raises the first failure
            pass


@dataclass(frozen=True)
class CacheEntry:
    """A complete entry: its directory and the metadata recorded when it was stored."""

    key: str
    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    def sha256(self, name: str) -> str:
        return str(self.meta["files"][name]["sha256"])

    @property
    def build(self) -> dict[str, Any]:
        """What the stage recorded in build.json (artifacts, tools, record fields), if stored."""
        return dict(self.meta.get("build") or {})

    @property
    def size(self) -> int:
        return int(self.meta.get("size") or sum(_file_sizes(self.meta)))


def _file_sizes(meta: Mapping[str, Any]) -> Iterator[int]:
    for info in meta.get("files", {}).values():
        if info.get("type") == "dir":
            yield from (e["size"] for e in info["entries"].values() if e["type"] == "file")
        else:
            yield int(info["size"])


class Cache:
    """Entries of one stage (``rootfs``, ``composefs``, …) under the cache directory."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root = Path(root)
        self.stage = stage
        self.dir = self.root / stage

    def entry_path(self, key: str) -> Path:
        return self.dir / key

    # --- lookup ----------------------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` when it is complete (meta.json present, every file the right size).

        Sizes only: the sha256 of every file is checked when the entry is restored."""
        path = self.entry_path(key)
        try:
            meta = json.loads((path / META).read_text())
            for name, info in meta["files"].items():
                if info.get("type") == "dir":
                    checks = [(f"{name}/{rel}", e["size"]) for rel, e in info["entries"].items()
                              if e["type"] == "file"]  # fmt: skip
                else:
                    checks = [(name, info["size"])]
                for rel, size in checks:
                    if (path / rel).stat().st_size != size:
                        log.warning("cache entry %s: %s has the wrong size; ignoring the entry", key, rel)
                        return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return CacheEntry(key, path, meta)

    # --- store -----------------------------------------------------------------------------------

    def store(
        self,
        key: str,
        files: Mapping[str, Path],
        inputs: Mapping[str, Any],
        sha256s: Mapping[str, str] | None = None,
        build: Mapping[str, Any] | None = None,
    ) -> CacheEntry:
        """Store ``files`` (name → file or directory) under ``key``; replaces an existing entry whole.

        ``sha256s`` gives digests already computed (a large tarball is then not read twice); ``build``
        is what the stage recorded in build.json, restored with the files on a hit.
        """
        self._prune_stale_tmp()
        dest = self.entry_path(key)
        meta: dict[str, Any] = {
            "key": key,
            "stage": self.stage,
            "stored_at": int(time.time()),
            "inputs": dict(inputs),
            "files": {},
        }
        if build is not None:
            meta["build"] = dict(build)
        try:
            with atomic_path(dest, directory=True) as tmp:
                for name, src in files.items():
                    if src.is_dir():
                        meta["files"][name] = self._store_tree(src, tmp / name)
                    else:
                        place(src, tmp / name)
                        digest = (sha256s or {}).get(name) or sha256_file(tmp / name)
                        meta["files"][name] = {
                            "size": src.stat().st_size,
                            "mode": stat.S_IMODE(src.stat().st_mode),
                            "sha256": digest,
                        }
                meta["size"] = sum(_file_sizes(meta))
                (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                os.chmod(tmp, 0o755)
        except OSError as exc:
            raise CacheError(f"cannot store the cache entry {dest}: {exc}") from exc
        return CacheEntry(key, dest, meta)

    @staticmethod
    def _store_tree(src: Path, dest: Path) -> dict[str, Any]:
        entries = _tree_meta(src)
        dest.mkdir()
        files = []
        for rel, info in entries.items():
            if info["type"] == "dir":
                (dest / rel).mkdir()
            else:
                files.append(rel)

        def put(rel: str) -> None:
            _link_or_copy(src / rel, dest / rel)
            entries[rel]["sha256"] = sha256_file(dest / rel)

        _each(put, files)
        return {"type": "dir", "mode": stat.S_IMODE(src.stat().st_mode), "entries": entries}

    # --- restore ---------------------------------------------------------------------------------

    def restore(self, entry: CacheEntry, dests: Mapping[str, Path]) -> None:
        """Put the entry's files (name → destination path) in place, unverified (see ``restore_verified``)."""
        for name, dest in dests.items():
            place(entry.file(name), dest)

    def restore_verified(self, entry: CacheEntry, dests: Mapping[str, Path]) -> dict[str, str] | None:
        """Put the entry's files in place once every one has its recorded sha256; returns the digests.

        Each file is linked (or copied) to a temporary path beside its destination and hashed there;
        only when all match are they renamed into place. On a mismatch nothing is placed, the entry is
        discarded and None is returned: a damaged entry is never used. A file missing from the entry (a
        concurrent prune) is a miss: None too.
        """
        try:
            return self._restore_all(entry, dests)
        except FileNotFoundError:
            log.info("cache entry %s/%s vanished while being restored", self.stage, entry.key[:16])
            return None
        except CacheError as bad:  # raised by _restore_all only for a file that does not match
            log.warning("cache entry %s/%s is damaged (%s); discarding it and rebuilding",
                        self.stage, entry.key[:16], bad.message)  # fmt: skip
            self.discard(entry.key)
            return None

    def _restore_all(self, entry: CacheEntry, dests: Mapping[str, Path]) -> dict[str, str]:
        digests: dict[str, str] = {}
        # every temporary path is renamed into place when the stack closes normally, removed otherwise
        with contextlib.ExitStack() as stack:
            for name, dest in dests.items():
                info = entry.meta["files"][name]
                is_dir = info.get("type") == "dir"
                tmp = stack.enter_context(atomic_path(dest, directory=is_dir))
                if is_dir:
                    self._restore_tree(entry.file(name), tmp, info)
                    continue
                tmp.unlink()
                _link_or_copy(entry.file(name), tmp)
                digests[name] = sha256_file(tmp)
                if digests[name] != info["sha256"]:
                    raise CacheError(f"{name}: sha256 differs")
                os.chmod(tmp, info.get("mode", 0o644))
        return digests

    @staticmethod
    def _restore_tree(src: Path, dest: Path, info: Mapping[str, Any]) -> None:
        """Recreate a stored directory at ``dest`` (an empty directory), every file verified."""
        os.chmod(dest, info["mode"])
        files = []
        for rel, e in info["entries"].items():
            if e["type"] == "dir":
                (dest / rel).mkdir()
                os.chmod(dest / rel, e["mode"])
            else:
                files.append(rel)

        def take(rel: str) -> None:
            e = info["entries"][rel]
            _link_or_copy(src / rel, dest / rel)
            if sha256_file(dest / rel) != e["sha256"]:
                raise CacheError(f"{src.name}/{rel}: sha256 differs")
            os.chmod(dest / rel, e["mode"])

        _each(take, files)

    def touch(self, key: str) -> None:
        """Mark the entry as used now (its directory mtime is what ``prune`` evicts by)."""
        with contextlib.suppress(OSError):
            os.utime(self.entry_path(key))

    # --- removal and locking ---------------------------------------------------------------------

    def discard(self, key: str) -> None:
        """Remove an entry (found damaged); a concurrent reader sees it whole or not at all."""
        path = self.entry_path(key)
        if path.exists():
            trash = path.with_name(f".{key}.discarded.{os.getpid()}.{time.monotonic_ns()}")
            with contextlib.suppress(OSError):
                path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)

    def lock_path(self, key: str) -> Path:
        return self.root / LOCKS / f"{self.stage}.{key}.lock"

    @contextlib.contextmanager
    def lock(self, key: str, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the exclusive lock of ``key`` (waiting for another build that holds it).

        A cache directory that cannot hold lock files (read-only, another owner) is used unlocked, as
        a cache that cannot be written only costs time."""
        try:
            fd = _acquire(self.lock_path(key), blocking=False)
            if fd is None:
                if on_wait is not None:
                    on_wait()
                fd = _acquire(self.lock_path(key), blocking=True)
        except OSError as exc:
            log.warning("cache: cannot lock %s (%s); going on without the lock", key[:16], exc)
            fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def _prune_stale_tmp(self) -> None:
        """Remove temporary entries left by builds killed a day or more ago."""
        if not self.dir.is_dir():
            return
        now = time.time()
        for p in self.dir.iterdir():
            if p.name.startswith(".") and (p.name.endswith(".tmp") or ".discarded." in p.name):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                        shutil.rmtree(p, ignore_errors=True)


def _acquire(path: Path, *, blocking: bool) -> int | None:
    """An fd holding ``flock(path)``, or None when not ``blocking`` and someone else holds it.

    The lock file may be removed by ``prune`` (which holds the lock while it does): after locking, the
    path must still name the file we locked, else we locked a removed file and try again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


# --- the whole cache: statistics and LRU pruning ---------------------------------------------------


@dataclass(frozen=True)
class EntryInfo:
    stage: str
    key: str
    size: int
    last_used: float
    path: Path


def entries(root: Path) -> list[EntryInfo]:
    """Every complete entry of every stage under ``root``, least recently used first."""
    found = []
    root = Path(root)
    if not root.is_dir():
        return []
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != LOCKS):
        for path in stage_dir.iterdir():
            if path.name.startswith("."):
                continue
            try:
                meta = json.loads((path / META).read_text())
                last_used = path.stat().st_mtime
            except (OSError, ValueError):
                continue
            entry = CacheEntry(path.name, path, meta)
            found.append(EntryInfo(stage_dir.name, path.name, entry.size, last_used, path))
    return sorted(found, key=lambda e: (e.last_used, e.stage, e.key))


def stats(root: Path) -> dict[str, Any]:
    """Entry count and bytes per stage and in all, with the oldest and newest last use."""
    all_entries = entries(root)
    by_stage: dict[str, dict[str, int]] = {}
    for e in all_entries:
        s = by_stage.setdefault(e.stage, {"entries": 0, "bytes": 0})
        s["entries"] += 1
        s["bytes"] += e.size
    return {
        "path": str(root),
        "entries": len(all_entries),
        "bytes": sum(e.size for e in all_entries),
        "stages": dict(sorted(by_stage.items())),
        "oldest_use": int(all_entries[0].last_used) if all_entries else None,
        "newest_use": int(all_entries[-1].last_used) if all_entries else None,
    }


def prune(root: Path, max_size: int) -> dict[str, Any]:
    """Remove least recently used entries until the cache holds at most ``max_size`` bytes.

    An entry another build is using (its lock held) is skipped. Returns what was removed and kept."""
    all_entries = entries(root)
    total = sum(e.size for e in all_entries)
    removed: list[dict[str, Any]] = []
    for e in all_entries:
        if total <= max_size:
            break
        cache = Cache(root, e.stage)
        try:
            fd = _acquire(cache.lock_path(e.key), blocking=False)
            if fd is None:
                continue
            try:
                cache.discard(e.key)
                cache.lock_path(e.key).unlink(missing_ok=True)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CacheError(f"cannot prune the cache {root}: {exc}") from exc
        total -= e.size
        removed.append({"stage": e.stage, "key": e.key, "bytes": e.size})
    return {
        "max_bytes": max_size,
        "removed": removed,
        "removed_bytes": sum(r["bytes"] for r in removed),
        "bytes": total,
        "entries": len(all_entries) - len(removed),
    }


def default_cache_dir() -> Path:
    """``$DISKCI_CACHE``, else ``$XDG_CACHE_HOME/diskci``, else ``/var/cache/diskci`` for root, else
    ``~/.cache/diskci`` (a CI worker sets DISKCI_CACHE so that every job shares one cache)."""
    explicit = os.environ.get("DISKCI_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "diskci"
    if os.geteuid() == 0:
        return Path("/var/cache/diskci")
    return Path.home() / ".cache" / "diskci"
