"""The build cache: stage outputs kept under a key taken over everything that determines them.

An entry is a directory ``<cache>/<stage>/<key>/`` holding the output files and ``meta.json`` (their
sizes and sha256, and the key's inputs). It is assembled in a temporary directory beside it and renamed
into place, so an interrupted build never leaves a partial entry that a later build would trust. Files
go in and out by hard link when cache and output share a filesystem (outputs are only ever replaced by
rename, never changed in place), else by copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskci.atomic import atomic_path
from diskci.canonical import canonical_json
from diskci.errors import CacheError
from diskci.manifest import sha256_file
from diskci.spec import Architecture, PlatformSpec

log = logging.getLogger(__name__)

META = "meta.json"
# Bumped whenever the way diskci turns a spec into a root filesystem changes (hooks, options).
ROOTFS_RECIPE = "rootfs-v1"
_STALE_TMP_SECONDS = 24 * 3600


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
    return {
        "recipe": ROOTFS_RECIPE,
        "spec": spec.normalized(),
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


def place(src: Path, dest: Path) -> str:
    """Put ``src`` at ``dest`` (atomically): a hard link when possible, else a copy. Returns which."""
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
            how = "hardlink"
        except OSError:
            shutil.copyfile(src, tmp)
            how = "copy"
    return how


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


class Cache:
    """Entries of one stage (``rootfs``) under the cache directory."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root = Path(root)
        self.dir = self.root / stage

    def entry_path(self, key: str) -> Path:
        return self.dir / key

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` when it is complete (meta.json present, every file the right size)."""
        path = self.entry_path(key)
        try:
            meta = json.loads((path / META).read_text())
            for name, info in meta["files"].items():
                if (path / name).stat().st_size != info["size"]:
                    log.warning("cache entry %s: %s has the wrong size; ignoring the entry", key, name)
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return CacheEntry(key, path, meta)

    def store(
        self,
        key: str,
        files: Mapping[str, Path],
        inputs: Mapping[str, Any],
        sha256s: Mapping[str, str] | None = None,
    ) -> CacheEntry:
        """Store ``files`` (name → path) under ``key``; replaces an existing entry whole.

        ``sha256s`` gives digests already computed (a large tarball is then not read twice).
        """
        self._prune_stale_tmp()
        dest = self.entry_path(key)
        meta: dict[str, Any] = {
            "key": key,
            "stored_at": int(time.time()),
            "inputs": dict(inputs),
            "files": {},
        }
        try:
            with atomic_path(dest, directory=True) as tmp:
                for name, src in files.items():
                    place(src, tmp / name)
                    digest = (sha256s or {}).get(name) or sha256_file(tmp / name)
                    meta["files"][name] = {"size": src.stat().st_size, "sha256": digest}
                (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise CacheError(f"cannot store the cache entry {dest}: {exc}") from exc
        return CacheEntry(key, dest, meta)

    def restore(self, entry: CacheEntry, dests: Mapping[str, Path]) -> None:
        """Put the entry's files (name → destination path) in place."""
        for name, dest in dests.items():
            place(entry.file(name), dest)

    def discard(self, key: str) -> None:
        """Remove an entry (found damaged); a concurrent reader sees it whole or not at all."""
        path = self.entry_path(key)
        if path.exists():
            trash = path.with_name(f".{key}.discarded.{os.getpid()}")
            with contextlib.suppress(OSError):
                path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)

    def _prune_stale_tmp(self) -> None:
        """Remove temporary entries left by builds killed a day or more ago."""
        if not self.dir.is_dir():
            return
        now = time.time()
        for p in self.dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                        shutil.rmtree(p, ignore_errors=True)
