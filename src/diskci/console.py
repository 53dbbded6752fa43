"""Progress and logging for long operations: a rich live display on a terminal, plain timestamped
log lines otherwise (CI). Every stage runs inside ``step("...")``, which logs and times it."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.status import Status

log = logging.getLogger("diskci")

stderr = Console(stderr=True)


def interactive() -> bool:
    """True when progress can be drawn (stderr is a terminal and we are not in CI)."""
    import os

    return stderr.is_terminal and not os.environ.get("CI")


def setup_logging(verbose: bool = False) -> None:
    """Configure the ``diskci`` logger once: rich on a terminal, plain lines elsewhere."""
    root = logging.getLogger("diskci")
    if root.handlers:
        return
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if interactive():
        handler = RichHandler(console=stderr, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class Step:
    """A running step; ``update()`` shows the current sub-step (e.g. mmdebstrap's phase)."""

    def __init__(self, title: str, status: Status | None) -> None:
        self.title = title
        self.started = time.monotonic()
        self._status = status
        self._last_detail = ""

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, detail: str) -> None:
        if detail == self._last_detail:
            return
        self._last_detail = detail
        if self._status is not None:
            self._status.update(f"[bold]{self.title}[/] [dim]{self.elapsed:5.0f}s[/] {detail}")
        else:
            log.info("%s: %s", self.title, detail)


@contextlib.contextmanager
def step(title: str) -> Iterator[Step]:
    """Log the start and end (with duration) of ``title``; draw a spinner on a terminal."""
    if interactive():
        with stderr.status(f"[bold]{title}[/]") as status:
            s = Step(title, status)
            yield s
        stderr.print(f"[green]✓[/] {title} [dim]({s.elapsed:.1f}s)[/]")
    else:
        log.info("%s …", title)
        s = Step(title, None)
        try:
            yield s
        except BaseException:
            log.info("%s failed after %.1fs", title, s.elapsed)
            raise
        log.info("%s done (%.1fs)", title, s.elapsed)
