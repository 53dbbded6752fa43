"""process.run on ^C: the tool gets to finish its own cleanup (its output is still read, so it does not
die of SIGPIPE half-way), then KeyboardInterrupt reaches the caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from polling import wait_until

CHILD = """
import sys
from pathlib import Path
from diskci.process import run

marker, log = Path(sys.argv[1]), Path(sys.argv[2])
# a tool that, on SIGINT, keeps writing output for a while (like mmdebstrap unmounting), then records it
script = (
    f"trap 'for i in $(seq 1 2000); do echo cleaning $i; done; sleep 1; echo done > {marker}; exit 130' INT; "
    "echo started; while :; do sleep 0.1; done"
)
try:
    run(["sh", "-c", script], log_file=log)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_interrupted_tool_finishes_its_cleanup(tmp_path: Path) -> None:
    marker, log = tmp_path / "marker", tmp_path / "tool.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), str(log)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal would make for ^C
    )

    def tool_started() -> bool:
        if "started" in (log.read_text() if log.exists() else ""):
            return True
        assert proc.poll() is None
        return False

    wait_until(tool_started, 30, interval=0.05, what="the tool to start")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in out
    assert marker.read_text() == "done\n"  # the tool's cleanup ran to its end
    assert "cleaning 2000" in log.read_text()
