"""Reading this machine's process table (``/proc``) to know a local worker's processes for sure.

A pid alone is not an identity: once a process is gone its pid may be given to another. A process is
named here by ``(pid, start time)`` (``/proc/<pid>/stat`` field 22, in clock ticks since boot), and
nothing is signalled unless both still match. A zombie counts as gone (it has exited; only its
parent's ``wait`` is missing).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """One process for sure: its pid and its start time."""

    pid: int
    start_time: int


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    session: int
    start_time: int


def _stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and ")", so split after the last ")"
    fields = text[text.rfind(")") + 2 :].split()
    return _Stat(state=fields[0], ppid=int(fields[1]), session=int(fields[3]), start_time=int(fields[19]))


def identify(pid: int) -> ProcessId | None:
    """The live process ``pid`` now is, or None (no such process, or a zombie)."""
    stat = _stat(pid)
    if stat is None or stat.state in ("Z", "X"):
        return None
    return ProcessId(pid, stat.start_time)


def alive(process: ProcessId) -> bool:
    """Whether ``process`` still runs (the same pid with the same start time, not a zombie)."""
    return identify(process.pid) == process


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def _has_env(pid: int, entry: bytes) -> bool:
    try:
        return entry in (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def session_ids() -> dict[int, int]:
    """Every live process's session id, by pid."""
    found = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat.state not in ("Z", "X"):
            found[pid] = stat.session
    return found


def related(*, session: ProcessId | None, env_entry: str) -> set[ProcessId]:
    """The processes of one process tree: the members of ``session`` (when its leader still runs),
    every process whose environment holds ``env_entry`` (``NAME=value``; inherited by the whole tree,
    also by children that made their own session), and all their descendants."""
    stats = {pid: s for pid in _pids() if (s := _stat(pid)) is not None and s.state not in ("Z", "X")}
    leader = stats.get(session.pid) if session is not None else None
    leader_alive = leader is not None and session is not None and leader.start_time == session.start_time
    entry = env_entry.encode()
    members = {
        pid
        for pid, s in stats.items()
        if (leader_alive and session is not None and s.session == session.pid) or _has_env(pid, entry)
    }
    children: dict[int, list[int]] = {}
    for pid, s in stats.items():
        children.setdefault(s.ppid, []).append(pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in members:
                members.add(child)
                todo.append(child)
    members.discard(os.getpid())
    return {ProcessId(pid, stats[pid].start_time) for pid in members}


def signal_all(processes: set[ProcessId], sig: signal.Signals) -> int:
    """Send ``sig`` to each of ``processes`` that is still itself; returns how many were signalled.

    Through a pidfd opened before the start time is checked, so a pid reused in between is never hit."""
    sent = 0
    for process in processes:
        try:
            fd = os.pidfd_open(process.pid)
        except OSError:  # gone
            continue
        try:
            if alive(process):
                signal.pidfd_send_signal(fd, sig)
                sent += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return sent
