"""A job's ``outputs:`` as the runner reports them: the steps' outputs read from act's ``set-output``
lines (recorded from a real act 0.2.89 run in host mode: tests/assets/act/step-outputs.jsonl, the job
below), then the job's output expressions evaluated against them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diskci.runner.act_output import JobLog
from diskci.runner.job_outputs import MAX_OUTPUT_CHARS, job_outputs

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "act"
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)

# the job of the recorded run
JOB: dict[str, Any] = {
    "runs-on": "amd64",
    "outputs": {
        "digests": "${{ steps.build.outputs.digests }}",
        "both": "${{ steps.build.outputs.arch }}-${{ steps.second.outputs.v }}",
    },
    "steps": [{"id": "build", "run": "..."}, {"id": "second", "run": "..."}, {"run": "..."}],
}
KEYS = ["build", "second", "2"]


def _recorded() -> JobLog:
    job_log = JobLog("build", KEYS, now=lambda: NOW)
    for line in (ASSETS / "step-outputs.jsonl").read_text().splitlines():
        job_log.feed(line + "\n")
    assert job_log.finish(0) == "RESULT_SUCCESS"
    return job_log


def _results(job_log: JobLog) -> dict[str, str | None]:
    return {key: step.result for key, step in zip(KEYS, job_log.steps, strict=True)}


def test_each_steps_outputs_are_read_from_acts_set_output_lines() -> None:
    job_log = _recorded()
    assert job_log.step_outputs == {
        "build": {"digests": '{"amd64/rootfs.img":"aa","amd64/vmlinuz":"bb"}', "arch": "amd64"},
        "second": {"v": "two", "multi": "line1\nline2"},  # a heredoc value keeps its newline
        "2": {"legacy": "old"},  # ::set-output, by the step's index (it has no id)
    }
    assert [s.result for s in job_log.steps] == ["RESULT_SUCCESS"] * 3


def test_the_jobs_outputs_are_its_expressions_evaluated_against_the_steps() -> None:
    job_log = _recorded()
    outputs, problems = job_outputs(JOB, job_log.step_outputs, _results(job_log))
    assert outputs == {
        "digests": '{"amd64/rootfs.img":"aa","amd64/vmlinuz":"bb"}',
        "both": "amd64-two",
    }
    assert problems == []


def test_other_contexts_and_step_conclusions_are_there_too() -> None:
    job = {
        "strategy": {"matrix": {"arch": ["arm64"]}},
        "outputs": {
            "arch": "${{ matrix.arch }}",
            "from_needs": "${{ needs.prep.outputs.tag }}",
            "outcome": "${{ steps.build.conclusion }}",
            "missing": "${{ steps.nothing.outputs.x }}",  # a missing value is empty, as in Actions
            "registry": "${{ vars.DISKCI_REGISTRY }}",
        },
    }
    outputs, problems = job_outputs(
        job,
        {"build": {}},
        {"build": "RESULT_FAILURE"},
        needs={"prep": {"outputs": {"tag": "v1"}, "result": "RESULT_SUCCESS"}},
        variables={"DISKCI_REGISTRY": "127.0.0.1:5000"},
    )
    assert outputs == {
        "arch": "arm64",
        "from_needs": "v1",
        "outcome": "failure",
        "missing": "",
        "registry": "127.0.0.1:5000",
    }
    assert problems == []


def test_outputs_that_cannot_be_evaluated_are_too_long_or_hold_a_secret_are_left_out_saying_why() -> None:
    job = {
        "outputs": {
            "good": "${{ steps.s.outputs.a }}",
            "broken": "${{ secrets.X }}",  # not a context a job's outputs may read
            "huge": "${{ steps.s.outputs.big }}",
            "leak": "token=${{ steps.s.outputs.t }}",
        }
    }
    step_outputs = {"s": {"a": "1", "big": "x" * (MAX_OUTPUT_CHARS + 1), "t": "runtime-token-123"}}
    outputs, problems = job_outputs(job, step_outputs, {"s": "RESULT_SUCCESS"}, masks=["runtime-token-123"])
    assert outputs == {"good": "1"}
    assert len(problems) == 3
    assert problems[0].startswith("output broken left out:") and "unknown context 'secrets'" in problems[0]
    assert problems[1].startswith("output huge left out:") and str(MAX_OUTPUT_CHARS) in problems[1]
    assert problems[2] == "output leak left out: it holds a secret"


def test_a_job_without_outputs_reports_none() -> None:
    job_log = _recorded()
    assert job_outputs({"steps": []}, job_log.step_outputs, _results(job_log)) == ({}, [])
