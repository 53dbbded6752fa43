"""The operator runbook through the platform, on this machine (issue 12's "must show"): a local CI
worker labelled amd64 and arm64 is provisioned; ``git push origin v2026.11.0`` to the platform's
image-build repository starts a run; the run goes queued → in_progress → completed with both build
jobs and the publish job, their logs read while they ran; the publication is verified with both
architectures, signed with the identity from the job's OIDC token; it becomes the default; a QEMU
node netboots it; the worker is decommissioned and nothing of it is left in the process table.

The builds run through the real workflow, with act on the worker, sharing the e2e build cache (the
repository's commit time is the e2e builds' SOURCE_DATE_EPOCH, so the root filesystems are reused).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diskci.demo import DemoConfig
from diskci.demo_runbook import run_runbook_demo
from diskci.platform.providers.local import MARK_VARIABLE

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]


def test_tag_push_builds_both_architectures_publishes_boots_and_decommissions(
    test_cache: Path, source_date_epoch: int, tmp_path: Path
) -> None:
    state = tmp_path / "runbook"
    result = run_runbook_demo(
        DemoConfig(
            spec_path=REPO / "platforms" / "debian-12.yaml",
            state_dir=state,
            cache_dir=test_cache,
            source_date_epoch=source_date_epoch,
        )
    )
    # the run: both architectures built by their own jobs, then the publish job, all on the worker
    assert result.conclusion == "success"
    jobs = {j["name"]: j for j in result.jobs}
    assert set(jobs) == {"build amd64", "build arm64", "publish"}
    assert {j["conclusion"] for j in jobs.values()} == {"success"}
    assert {j["runner"] for j in jobs.values()} == {"ci-worker-1"}
    lines = [line for _, line in result.timeline]
    assert lines[0] == "run queued" and lines[-1] == "run completed/success"
    assert lines.index("run in_progress") < lines.index("job publish in_progress on ci-worker-1")
    # the publish job starts only once both builds are done
    at = {line: seconds for seconds, line in result.timeline}
    for arch in ("amd64", "arm64"):
        assert at[f"job build {arch} completed/success"] <= at["job publish in_progress on ci-worker-1"]
        assert result.log_rows[f"build {arch}"] > 0, "the build's log was readable while it ran"

    # the publication: both architectures, signed as the platform's own workflow on the pushed tag
    assert result.publication_id > 0
    assert result.architectures == ["amd64", "arm64"]
    assert re.fullmatch(
        r"http://127\.0\.0\.1:\d+/debian-12/\.gitea/workflows/build\.yaml@refs/tags/v2026\.11\.0",
        result.signer_identity,
    ), result.signer_identity

    # a node netbooted the default publication, through every step of the verified boot
    assert result.booted_line.strip().endswith("diskci: booted debian-12 2026.11.0")
    order = [s for s in result.reports if s in ("fetched", "verified", "switching_root", "booted")]
    assert order[-4:] == ["fetched", "verified", "switching_root", "booted"]

    # decommissioned: the instance is terminated and no process of the worker is left
    assert result.worker_final_status == "terminated"
    workers = state / "platform" / "workers"
    left_dirs = [p.name for p in workers.iterdir() if p.is_dir()] if workers.exists() else []
    assert not left_dirs, f"the worker's directory is left: {left_dirs}"  # (its lock file may stay)
    left = _processes_marked(f"{MARK_VARIABLE}={workers}/".encode())
    assert not left, f"processes of the decommissioned worker are still running: {left}"


def _processes_marked(prefix: bytes) -> list[int]:
    """The pids whose environment has an entry starting with ``prefix`` (a local worker's mark)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            entries = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if any(entry.startswith(prefix) for entry in entries):
            found.append(int(proc.name))
    return found
