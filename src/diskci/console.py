"""Progress and logging for long operations: a rich live display on a terminal, plain timestamped
log lines otherwise (CI). A long operation runs inside ``step("...")``, which logs and times it; steps
that run at the same time (the build's stages) run inside ``Steps().step("...")``, which shows every
running one (a spinner line each on a terminal; the same log lines as ``step`` otherwise)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.spinner import Spinner
from rich.status import Status
from rich.text import Text

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

    def __init__(self, title: str, status: Status | None, *, live: bool = False) -> None:
        self.title = title
        self.started = time.monotonic()
        self._status = status
        self._live = live  # drawn by a Steps display, which reads ``detail``
        self._last_detail = ""

    @property
    def detail(self) -> str:
        return self._last_detail

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, detail: str) -> None:
        if detail == self._last_detail:
            return
        self._last_detail = detail
        if self._live:
            return
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


class Steps:
    """Steps running at the same time (``with Steps() as steps: ... steps.step(title)`` in threads).

    On a terminal: a live list of the running steps with their elapsed time and detail, and a ✓ line
    per finished one. Otherwise: the same plain log lines as ``step``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[Step] = []
        self._live: Live | None = None

    def __enter__(self) -> Steps:
        if interactive():
            self._live = Live(
                get_renderable=self._render, console=stderr, refresh_per_second=8, transient=True
            )
            self._live.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self) -> RenderableType:
        with self._lock:
            running = list(self._running)
        lines = [
            Spinner(
                "dots", Text.from_markup(f"[bold]{s.title}[/] [dim]{s.elapsed:5.0f}s[/] ").append(s.detail)
            )
            for s in running
        ]
        return Group(*lines)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """Like ``step(title)``, beside the other running steps."""
        if self._live is None:
            with step(title) as s:
                yield s
            return
        s = Step(title, None, live=True)
        with self._lock:
            self._running.append(s)
        try:
            yield s
        except BaseException:
            stderr.print(f"[red]✗[/] {title} [dim](failed after {s.elapsed:.1f}s)[/]")
            raise
        else:
            stderr.print(f"[green]✓[/] {title} [dim]({s.elapsed:.1f}s)[/]")
        finally:
            with self._lock:
                self._running.remove(s)
