"""Build-stage progress read from a CI job's log rows, for the run page.

``diskci build`` logs each stage of each architecture on plain (non-terminal) output as
``HH:MM:SS INFO <stage> (<arch>) …`` when it starts, ``… done (1.2s)`` or ``… failed after 1.2s``
when it ends, and ``<stage> <arch>: cache hit (key …)`` when its outputs came from the cache (see
``diskci.console.step`` and ``diskci.image.pipeline``). ``stage_events`` turns the rows of one page of a
log into those transitions in order; the page applies them to its table of stages as the log grows, so
rows are read once, never again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

_PREFIX = r"\d\d:\d\d:\d\d INFO "
_STAGE = r"(?P<stage>[a-z][a-z0-9_-]{0,40}) \((?P<arch>[a-z0-9_]{1,16})\)"
_STARTED = re.compile(_PREFIX + _STAGE + r" (?:…|\.\.\.)\s*$")
_DONE = re.compile(_PREFIX + _STAGE + r" done \((?P<seconds>\d+(?:\.\d+)?)s\)\s*$")
_FAILED = re.compile(_PREFIX + _STAGE + r" failed after (?P<seconds>\d+(?:\.\d+)?)s\s*$")
_CACHED = re.compile(_PREFIX + r"(?P<stage>[a-z][a-z0-9_-]{0,40}) (?P<arch>[a-z0-9_]{1,16}): cache hit\b")

StageState = Literal["running", "done", "failed", "cached"]


@dataclass(frozen=True)
class StageEvent:
    """A stage of one architecture reached ``state`` (``seconds``: how long it took, once ended)."""

    stage: str
    arch: str
    state: StageState
    seconds: float | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def stage_event(row: str) -> StageEvent | None:
    """The stage transition one log row reports, or None."""
    if " INFO " not in row:
        return None
    for pattern, state in ((_STARTED, "running"), (_DONE, "done"), (_FAILED, "failed"), (_CACHED, "cached")):
        match = pattern.search(row)
        if match is not None:
            seconds = match.groupdict().get("seconds")
            return StageEvent(
                stage=match["stage"],
                arch=match["arch"],
                state=state,  # type: ignore[arg-type]
                seconds=float(seconds) if seconds is not None else None,
            )
    return None


def stage_events(rows: Iterable[str]) -> list[StageEvent]:
    """Every stage transition in ``rows``, in order."""
    return [event for row in rows if (event := stage_event(row)) is not None]
