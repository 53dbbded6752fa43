"""``diskci ci watch``'s follower: every job, step and log change reported once, in order, until the run
completes and its started jobs' logs are complete."""

from __future__ import annotations

from typing import Any

from diskci.cli.ci_watch import follow


def _run(status: str, job_status: str, step: tuple[str, str | None], conclusion: str | None = None) -> Any:
    return {
        "run_id": 7,
        "status": status,
        "conclusion": conclusion,
        "jobs": [
            {
                "name": "build amd64",
                "status": job_status,
                "conclusion": conclusion if job_status == "completed" else None,
                "runner": None if job_status == "queued" else "w1",
                "waiting_for_labels": ["amd64"] if job_status == "queued" else [],
                "started_at": None if job_status == "queued" else "2026-12-01T10:00:00Z",
                "steps": [{"name": "Build", "status": step[0], "conclusion": step[1]}],
            }
        ],
    }


def test_follow_reports_each_change_once_and_returns_the_completed_run() -> None:
    runs = iter(
        [
            _run("queued", "queued", ("queued", None)),
            _run("in_progress", "in_progress", ("in_progress", None)),
            _run("in_progress", "in_progress", ("in_progress", None)),
            _run("completed", "completed", ("completed", "success"), "success"),
        ]
    )
    log = ["row 0", "row 1", "row 2"]
    served = {"n": 0}

    def fetch_logs(job: str, offset: int) -> dict[str, Any]:
        served["n"] = min(served["n"] + 2, len(log))  # the log grows as the run goes
        rows = log[offset : served["n"]]
        return {"logs": rows, "next_offset": offset + len(rows), "complete": served["n"] == len(log)}

    changes: list[dict[str, Any]] = []
    run = follow(lambda: next(runs), fetch_logs, changes.append, sleep=lambda _s: None)
    assert run is not None and run["conclusion"] == "success"
    kinds = [(c["type"], c.get("status") or c.get("line")) for c in changes]
    assert kinds == [
        ("job", "queued"),
        ("step", "queued"),
        ("job", "in_progress"),
        ("step", "in_progress"),
        ("log", "row 0"),
        ("log", "row 1"),
        ("log", "row 2"),
        ("job", "completed"),
        ("step", "completed"),
        ("run", None),
    ]
    assert changes[0]["waiting_for_labels"] == ["amd64"]


def test_follow_gives_up_after_its_timeout() -> None:
    ticks = iter(range(100))
    run = follow(
        lambda: _run("queued", "queued", ("queued", None)),
        lambda job, offset: {"logs": [], "next_offset": 0, "complete": False},
        lambda change: None,
        timeout=3,
        clock=lambda: float(next(ticks)),
        sleep=lambda _s: None,
    )
    assert run is None
