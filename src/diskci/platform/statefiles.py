"""The platform's state on disk is its owner's only: directories 0700, files 0600.

``private_dir`` creates each missing directory of a path 0700 (existing ones, which may be shared like
``/tmp``, are left as they are). ``private_file`` creates a file 0600, or takes an existing file of
ours down to 0600. SQLite gives a database's ``-wal`` and ``-shm`` files the mode of the database
file, so creating the database 0600 first keeps them private too. Modes are given to ``mkdir`` and
``open`` directly, so no process-wide umask is changed while other threads run.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700; return it."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask, which may be stricter
    return path


def tighten(path: Path) -> None:
    """Take an existing file of ours down to 0600 (someone else's file is left alone)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & FILE_MODE)


def private_file(path: Path, *, exclusive: bool = False) -> int:
    """Open ``path`` for writing, creating it 0600 (its directory 0700); return the descriptor.

    With ``exclusive``, an existing file is an error (``FileExistsError``); else it is tightened."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0)
    fd = os.open(path, flags, FILE_MODE)
    if not exclusive:
        tighten(path)
    return fd


def private_sqlite_file(path: Path) -> None:
    """Make sure the SQLite database at ``path`` (and its journal files, if any) are 0600."""
    os.close(private_file(path))
    for suffix in SQLITE_COMPANIONS:
        tighten(path.with_name(path.name + suffix))
