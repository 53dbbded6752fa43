"""The host checks: a missing tool or root skips locally and fails in CI; what CI may lack skips in both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import host_tools
from host_tools import require_root, require_tool, unavailable

MISSING = "diskci-no-such-tool"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")


@pytest.mark.usefixtures("local")
def test_a_missing_tool_skips_locally() -> None:
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed \\(Debian package x\\)"):
        require_tool(MISSING, "Debian package x")


@pytest.mark.usefixtures("ci")
def test_a_missing_tool_fails_in_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"make setup` installs it.*fails instead of skipping"):
        require_tool(MISSING, "Debian package x")


@pytest.mark.usefixtures("ci")
def test_mkcomposefs_missing_in_ci_names_the_script_that_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_tools.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"make setup` builds it \(deploy/build-composefs\.sh\)"):
        require_tool("mkcomposefs", "Debian 13: composefs")


@pytest.mark.parametrize("mode", ["local", "ci"])
def test_a_present_tool_gives_its_path(mode: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(mode)
    assert require_tool("sh", "everywhere").endswith("/sh")


@pytest.mark.parametrize(
    ("mode", "outcome"), [("local", pytest.skip.Exception), ("ci", pytest.fail.Exception)]
)
def test_no_root_skips_locally_and_fails_in_ci(
    mode: str, outcome: type[BaseException], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    request.getfixturevalue(mode)
    monkeypatch.setattr(host_tools.os, "geteuid", lambda: 1000)
    with pytest.raises(outcome, match="needs root for x"):
        require_root("needs root for x")


@pytest.mark.parametrize("mode", ["local", "ci"])
def test_what_ci_may_lack_skips_in_both(mode: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(mode)
    with pytest.raises(pytest.skip.Exception, match="no loop devices"):
        unavailable("no loop devices", ci_guarantee=None)


def test_the_marker_runs_its_check_before_the_test(tmp_path: Path) -> None:
    """A pytest run in CI with the plugin: a test needing a missing tool errors, one needing sh passes."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_marked.py").write_text(
        "from host_tools import needs_tool\n\n"
        f"@needs_tool({MISSING!r}, 'nowhere')\ndef test_needs_missing():\n    pass\n\n"
        "@needs_tool('sh', 'everywhere')\ndef test_needs_sh():\n    pass\n"
    )
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(TESTS)}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "host_tools", "-rA"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    # the check runs at setup, before the test's fixtures: a failed check is an error of the run
    assert proc.returncode == 1 and "1 passed, 1 error" in proc.stdout, proc.stdout + proc.stderr
    assert f"{MISSING} is not installed (nowhere), but `make setup` installs it" in proc.stdout
