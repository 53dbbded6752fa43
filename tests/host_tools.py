"""What tests need from the host (tools, root): skip when it is missing here, fail when it is missing in CI.

``make setup`` installs every package in deploy/debian-packages.txt and CI runs the tests as root (README),
so with ``$CI`` set (read as ``diskci.console`` reads it) a missing tool or root is a broken set-up that
must not hide behind skips; mkcomposefs, which Debian 12 does not package, ``make setup`` builds from
Debian's source (deploy/build-composefs.sh). What it cannot provide still skips in CI: the host kernel's
features (loop devices, erofs, overlayfs), each said at its call site.

This module is also a pytest plugin (``pytest_plugins`` in tests/conftest.py): ``needs_tool`` and
``needs`` mark tests or modules whose host checks run before the test's fixtures.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from typing import NoReturn

import pytest

MARKER = "needs_host"
SETUP_INSTALLS = "`make setup` installs it (deploy/debian-packages.txt)"
CI_RUNS_AS_ROOT = "CI runs the tests as root (README)"
# Tools make setup builds rather than installs from a Debian package.
SETUP_BUILDS = {"mkcomposefs": "`make setup` builds it (deploy/build-composefs.sh)"}


def in_ci() -> bool:
    """Whether the tests run in CI (``$CI`` set, as CI systems set it)."""
    return bool(os.environ.get("CI"))


def unavailable(reason: str, *, ci_guarantee: str | None) -> NoReturn:
    """Skip the running test because the host lacks something (``reason``).

    When ``ci_guarantee`` says why CI has it, in CI the test fails instead; None lets CI skip too.
    """
    if ci_guarantee is not None and in_ci():
        pytest.fail(f"{reason}, but {ci_guarantee}: in CI this fails instead of skipping", pytrace=False)
    # reported at the test's location, as a skip mark's would be, not at this line
    raise pytest.skip.Exception(reason, _use_item_location=True)


def require_tool(name: str, why: str) -> str:
    """The path of host tool ``name``; skips (fails in CI: ``make setup`` provides it) when not installed.

    ``why`` names where the tool comes from, e.g. "Debian package 'erofs-utils'".
    """
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed ({why})", ci_guarantee=SETUP_BUILDS.get(name, SETUP_INSTALLS))
    return path


def require_root(why: str) -> None:
    """Skip unless running as root (fails in CI, which runs as root); ``why`` says what needs it."""
    if os.geteuid() != 0:
        unavailable(why, ci_guarantee=CI_RUNS_AS_ROOT)


def needs(check: Callable[[], object]) -> pytest.MarkDecorator:
    """Mark a test (or a module, in ``pytestmark``) to run ``check`` (which calls ``unavailable``) first."""
    return getattr(pytest.mark, MARKER)(check)


def needs_tool(name: str, why: str) -> pytest.MarkDecorator:
    """Mark a test (or module) as needing host tool ``name`` (see ``require_tool``)."""
    return needs(functools.partial(require_tool, name, why))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(check): run a host check first (tests/host_tools.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(MARKER):
        mark.args[0]()
