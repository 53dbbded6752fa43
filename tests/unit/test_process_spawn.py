"""process.spawn: long-lived children get the clean tool environment, stdin from /dev/null, output
merged into a log file or a pipe, and are stopped by the one ladder (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import time
from pathlib import Path

from diskci.process import spawn


def test_output_goes_to_the_log_and_the_environment_is_explicit(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    script = 'echo "out $DISKCI_X ${HOSTNAME_NOT_KEPT:-unset}"; echo err >&2; read -r line || echo eof'
    with spawn(["sh", "-c", script], env={"DISKCI_X": "1"}, log_file=log) as child:
        assert child.wait(timeout=10) == 0
    assert log.read_text().splitlines() == ["out 1 unset", "err", "eof"]


def test_the_pipe_is_readable_and_the_child_is_stopped(tmp_path: Path) -> None:
    with spawn(["sh", "-c", "echo ready; exec sleep 60"]) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        assert child.poll() is None
    assert child.poll() is not None  # SIGTERM ended it when the block ended


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    marker = tmp_path / "trapped"
    script = f"trap '' TERM; touch {marker}; while :; do sleep 0.1; done"
    with spawn(["sh", "-c", script], term_wait=0.5, log_file=tmp_path / "log") as child:
        while not marker.exists():
            time.sleep(0.05)
    assert child.poll() == -9
    assert time.monotonic() - started < 10
