"""cloud-init's own schema check of a worker's user-data (``cloud-init schema --config-file``), for the
tests that render it: the EC2 provider, the Gitea workers and the Gitea runbook."""

from __future__ import annotations

import subprocess
from pathlib import Path

from host_tools import require_tool


def cloud_init_schema(user_data: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """cloud-init's verdict on ``user_data`` (written to ``directory/user-data``)."""
    cloud_init = require_tool("cloud-init", "Debian package 'cloud-init'")
    path = directory / "user-data"
    path.write_text(user_data)
    return subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def assert_valid_cloud_config(user_data: str, directory: Path) -> None:
    done = cloud_init_schema(user_data, directory)
    assert done.returncode == 0 and "Valid cloud-config" in done.stdout, done.stdout + done.stderr
