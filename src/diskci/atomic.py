"""Write-then-rename: outputs appear whole or not at all, never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(dest: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``, else remove it.

    With ``directory=True`` the temporary path is an (empty) directory; an existing ``dest`` directory
    is replaced.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if directory and dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        _remove(old)
        dest.rename(old)
        tmp.rename(dest)
        _remove(old)
    else:
        if not directory:
            os.chmod(tmp, 0o644)
        tmp.replace(dest)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: Path, text: str) -> None:
    write_bytes(dest, text.encode())
