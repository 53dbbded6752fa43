"""``wait_until``: returns the predicate's first truthy value; fails naming what it waited for."""

from __future__ import annotations

import itertools

import pytest

from polling import wait_until


def test_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, "", {"started": 1}])
    assert wait_until(lambda: next(values), 5, interval=0.001, what="x") == {"started": 1}


def test_times_out_naming_what_and_the_timeout() -> None:
    calls = itertools.count()
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0.05 s waiting for the server\nlast: "):
        wait_until(lambda: next(calls) < 0, 0.05, interval=0.01, what="the server", detail=lambda: "last: x")
    assert next(calls) > 1  # it polled more than once
