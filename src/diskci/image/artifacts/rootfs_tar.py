"""Read files out of the root filesystem tarball (``<arch>/rootfs.tar``) without extracting it.

Paths are looked up the way the target system would see them: symlinks (absolute ones relative to the
tarball's root, such as the merged-/usr links ``/bin -> usr/bin``) are followed component by component,
so ``/bin/busybox`` finds ``./usr/bin/busybox``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from types import TracebackType

from diskci.errors import BuildError, FormatError

ROOTFS_TAR = "rootfs.tar"
_MAX_SYMLINKS = 40


def member_path(name: str) -> str:
    """A tar member name as a root-relative path without ``./`` or trailing ``/`` ("" is the root)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def rootfs_tar_path(arch_dir: Path) -> Path:
    path = arch_dir / ROOTFS_TAR
    if not path.is_file():
        raise BuildError(f"{path}: no root filesystem tarball (the rootfs stage makes it)")
    return path


class RootfsTarball:
    """An open root filesystem tarball with an index of its members."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close())
            self._members = {member_path(m.name): m for m in self._tar.getmembers()}
        except (tarfile.TarError, OSError) as exc:
            raise FormatError(f"{path}: not a readable tar archive: {exc}") from exc

    def __enter__(self) -> RootfsTarball:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    @property
    def tar(self) -> tarfile.TarFile:
        return self._tar

    def names(self) -> list[str]:
        """Every member path (root-relative, as stored)."""
        return list(self._members)

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """The stored path that ``path`` refers to inside the root, following symlinks."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, part])
            member = self._members.get(candidate)
            if member is not None and member.issym() and (todo or follow_last):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise BuildError(f"{self.path}: too many levels of symbolic links resolving /{path}")
                target = [p for p in member.linkname.split("/") if p not in ("", ".")]
                if member.linkname.startswith("/"):
                    done = []
                todo = target + todo
                continue
            done.append(part)
        return "/".join(done)

    def member(self, path: str) -> tarfile.TarInfo | None:
        """The member ``path`` refers to (symlinks followed), or None."""
        return self._members.get(self.resolve(path))

    def exists(self, path: str) -> bool:
        return self.member(path) is not None

    def read(self, path: str) -> bytes:
        """The contents of the regular file ``path`` (hard links followed)."""
        member = self.member(path)
        if member is None:
            raise BuildError(f"{self.path}: the root filesystem has no /{member_path(path)}")
        if not (member.isfile() or member.islnk()):
            raise BuildError(f"{self.path}: /{member_path(path)} is not a regular file")
        f = self._tar.extractfile(member)
        if f is None:
            raise BuildError(f"{self.path}: cannot read /{member_path(path)}")
        with f:
            return f.read()

    def listdir(self, path: str) -> list[str]:
        """Names directly inside directory ``path``, sorted."""
        base = self.resolve(path)
        prefix = base + "/" if base else ""
        out = {
            name[len(prefix) :].split("/", 1)[0]
            for name in self._members
            if name.startswith(prefix) and name != base and name[len(prefix) :]
        }
        return sorted(out)
