"""A QEMU machine whose serial console is read line by line: used by ``diskci demo`` and the boot tests.

``wait_for(..., unfinished=True)`` also matches the line being written, before its newline comes:
firmware prints ``>>Start PXE over IPv4.`` and then nothing for a minute, until its DHCP gives up.
By default only whole lines match, so a caller reading the line gets all of it.

``with QemuConsole(argv) as vm: vm.wait_for(r"diskci: booted", timeout=300)``; ``wait_for`` fails with
``BootTimeout`` carrying the last console lines, so a boot that goes wrong shows where it stopped. QEMU
always runs with TCG and user-mode networking (the callers build the argv); it is started and stopped
by ``diskci.process.spawn``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from diskci.errors import DiskciError
from diskci.process import Child, spawn

TAIL_LINES = 60


def _text(raw: bytes) -> str:
    """A console line as text (carriage returns dropped, undecodable bytes replaced)."""
    return raw.decode(errors="replace").replace("\r", "")


class BootTimeout(DiskciError):
    """The console line a boot waited for did not come in time, or QEMU exited first; the message
    names the pattern and holds the last console lines."""

    def __init__(self, pattern: str, why: str, elapsed: float, tail: str) -> None:
        self.pattern = pattern
        self.tail = tail
        super().__init__(
            f"{why} waiting for /{pattern}/ after {elapsed:.1f}s; last {TAIL_LINES} console lines:\n" + tail
        )


class QemuConsole:
    """``with QemuConsole(argv) as vm: vm.wait_for(r"diskci: booted", timeout=120)``."""

    def __init__(self, argv: Sequence[str], *, log_path: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.lines: list[str] = []
        self.partial = ""  # the console line being written: what came after the last newline
        self.started = 0.0
        self._cond = threading.Condition()
        self._stack = contextlib.ExitStack()
        self._child: Child | None = None
        self._reader: threading.Thread | None = None
        self._eof = False

    def __enter__(self) -> QemuConsole:
        self.started = time.monotonic()
        self._child = self._stack.enter_context(spawn(self.argv, term_wait=10.0))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        log = open(self.log_path, "w") if self.log_path else None  # noqa: SIM115
        pending = b""
        try:
            while chunk := self._child.stdout.read1(65536):  # type: ignore[attr-defined]
                *complete, pending = (pending + chunk).split(b"\n")
                lines = [_text(raw) for raw in complete]
                if log and lines:
                    log.write("".join(line + "\n" for line in lines))
                    log.flush()
                with self._cond:
                    self.lines.extend(lines)
                    self.partial = _text(pending)
                    self._cond.notify_all()
        finally:
            with self._cond:
                if pending:
                    self.lines.append(_text(pending))
                    if log:
                        log.write(self.lines[-1] + "\n")
                self.partial = ""
                self._eof = True
                self._cond.notify_all()
            if log:
                log.close()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tail(self, n: int = TAIL_LINES) -> str:
        with self._cond:
            return "\n".join(self._all_lines()[-n:])

    def _all_lines(self) -> list[str]:
        """The whole lines and the one being written, if any (call with the lock held)."""
        return [*self.lines, self.partial] if self.partial else self.lines

    def saw(self, pattern: str) -> bool:
        rx = re.compile(pattern)
        with self._cond:
            return any(rx.search(line) for line in self._all_lines())

    def wait_for(self, pattern: str, *, timeout: float, unfinished: bool = False) -> str:
        """The first console line matching ``pattern`` (with ``unfinished``, the line being written
        counts too, as it stands); BootTimeout (with the console tail) when none does within
        ``timeout`` seconds or QEMU exits first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self.lines)
                if unfinished and self.partial and rx.search(self.partial):
                    return self.partial
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "QEMU exited" if self._eof else f"no match within {timeout:.0f}s"
                    raise BootTimeout(pattern, why, self.elapsed, self.tail())
                self._cond.wait(min(left, 1.0))

    def stop(self) -> None:
        if self._child is None:
            return
        self._child.terminate()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self._stack.close()  # closes QEMU's output pipe
