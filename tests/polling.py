"""Waiting in tests: poll a predicate until it holds, or fail naming what never happened.

``wait_until`` is the one polling loop of the test suite (servers coming up, tasks starting, log lines
appearing). A predicate may itself assert or ``pytest.fail`` to give up early, e.g. when the process it
waits on has exited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.1,
    what: str = "the condition",
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and return that.

    Fails the test when ``timeout`` seconds pass first, naming ``what`` was awaited and the timeout, with
    ``detail()`` (e.g. the tail of a log) appended when given.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if detail is not None:
                message += f"\n{detail()}"
            pytest.fail(message, pytrace=False)
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """Whether GET ``url`` answers 200 now (False while nothing listens yet)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
