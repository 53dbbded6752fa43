"""act's ``--json`` output (recorded from real act 0.2.89 runs in host mode, tests/assets/act) folded into
log rows, the payload's steps and the job's result, as the runner reports them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from diskci.runner.act_job import _quote, act_argv, github_env, stub_jobs
from diskci.runner.act_output import JobLog

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "act"
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


def asset(name: str) -> list[str]:
    return (ASSETS / name).read_text().splitlines()


def fold(name: str, job_id: str, step_keys: list[str], returncode: int, **kw: object) -> tuple[JobLog, str]:
    job_log = JobLog(job_id, step_keys, now=lambda: NOW, **kw)  # type: ignore[arg-type]
    for line in asset(name):
        job_log.feed(line + "\n")
    return job_log, job_log.finish(returncode)


def test_a_failing_step_fails_the_job_and_the_steps_after_it_are_skipped() -> None:
    job_log, result = fold(
        "failing-step.jsonl", "build", ["0", "1", "2", "3"], 1, masks=["runtime-token-123"]
    )
    assert result == "RESULT_FAILURE"
    contents = [r.content for r in job_log.rows]
    assert "Couldn't get a valid docker connection" not in " ".join(contents)  # host mode needs no Docker
    assert contents[:2] == ["⭐ Run Set up job", "  ✅  Success - Set up job"]  # the job's, no step's
    assert contents[-1] == "Error: Job 'build amd64' failed"  # act's plain last words are kept
    assert "hello amd64" in contents and "second line" in contents  # one row per line, newline cut
    assert "token ***" in contents and not any("runtime-token-123" in c for c in contents)
    assert not any("s3cret" in c for c in contents)  # act masks ::add-mask:: values itself
    assert [s.result for s in job_log.steps] == [
        "RESULT_SUCCESS",
        "RESULT_SUCCESS",
        "RESULT_FAILURE",
        "RESULT_SKIPPED",
    ]
    first = job_log.steps[0]
    assert contents[first.log_index : first.log_index + first.log_length] == [
        "⭐ Run Main Say hi",
        "hello amd64",
        "second line",
        "  ✅  Success - Main Say hi [2.703017ms]",
    ]
    failed = job_log.steps[2]
    assert contents[failed.log_index + failed.log_length - 1] == "exit status 3"
    started = json.loads(next(line for line in asset("failing-step.jsonl") if "Run Main Say hi" in line))
    assert first.started_at == datetime.fromisoformat(started["time"])  # act's time of the step's first row
    assert job_log.steps[3].started_at is None and job_log.steps[3].stopped_at is None
    message = job_log.steps[0].message(0)
    assert message["id"] == "0" and message["result"] == "RESULT_SUCCESS"
    assert message["logIndex"] == str(first.log_index) and message["startedAt"].endswith("Z")


def test_the_stub_jobs_rows_are_dropped_and_steps_map_by_id_then_order() -> None:
    job_log, result = fold("needs-success.jsonl", "publish", ["show", "1", "2"], 0)
    assert result == "RESULT_SUCCESS"
    contents = [r.content for r in job_log.rows]
    assert "got sha256:1" in contents
    assert not any("Main true" in c for c in contents)  # the stub standing for job build
    show, skipped, last = job_log.steps
    assert (show.result, skipped.result, last.result) == (
        "RESULT_SUCCESS",
        "RESULT_SKIPPED",
        "RESULT_SUCCESS",
    )
    assert contents[last.log_index] == "⭐ Run Main Last"  # act's stepID 2 is the payload's third step
    assert show.log_index < last.log_index


def test_a_job_act_never_ran_is_a_failure_that_says_why() -> None:
    job_log, result = fold("unmapped-label.jsonl", "publish", ["0"], 0)
    assert result == "RESULT_FAILURE"
    assert "act exited with status 0 without running the job" in job_log.rows[-1].content
    assert job_log.steps[0].result == "RESULT_SKIPPED"


def test_a_cancelled_job_cancels_its_open_steps() -> None:
    job_log = JobLog("build", ["0", "1"], now=lambda: NOW)
    for line in asset("failing-step.jsonl")[:6]:  # cut in the middle of the first step
        job_log.feed(line)
    assert job_log.steps[0].started_at is not None and job_log.steps[0].result is None
    changes = job_log.changes
    assert job_log.finish(None, cancelled=True) == "RESULT_CANCELLED"
    assert [s.result for s in job_log.steps] == ["RESULT_CANCELLED", "RESULT_CANCELLED"]
    assert job_log.steps[0].stopped_at == NOW and job_log.changes > changes


def test_plain_text_and_blank_lines() -> None:
    job_log = JobLog("j", [], now=lambda: NOW)
    job_log.feed("not json\n")
    job_log.feed("\n")
    job_log.feed('{"jobID": "j", "msg": "a\\r\\nb\\n", "time": "yesterday"}')
    assert [(r.content, r.time) for r in job_log.rows] == [("not json", NOW), ("a", NOW), ("b", NOW)]


def test_a_whole_second_of_act_is_refined_by_the_arrival_time_within_it() -> None:
    arrived = datetime(2026, 12, 1, 13, 0, 5, 250_000, tzinfo=UTC)
    job_log = JobLog("j", [], now=lambda: arrived)
    job_log.feed('{"jobID": "j", "msg": "now", "time": "2026-12-01T13:00:05Z"}')  # the same second
    job_log.feed('{"jobID": "j", "msg": "late", "time": "2026-12-01T13:00:03Z"}')  # read seconds later
    job_log.feed('{"jobID": "j", "msg": "exact", "time": "2026-12-01T13:00:05.1Z"}')  # act was precise
    assert [r.time for r in job_log.rows] == [
        arrived,
        datetime(2026, 12, 1, 13, 0, 3, tzinfo=UTC),
        datetime(2026, 12, 1, 13, 0, 5, 100_000, tzinfo=UTC),
    ]


def test_dotenv_values_survive_godotenv_quoting() -> None:
    assert _quote("plain $HOME") == "'plain $HOME'"
    assert _quote('it\'s\nlines $X \\ "q"') == '"it\'s\\nlines \\$X \\\\ \\"q\\""'


def test_stub_jobs_carry_the_needed_outputs_as_literals() -> None:
    stubs = stub_jobs(
        {"build": {"outputs": {"digest": "it's ${{ x }}"}, "result": "RESULT_SUCCESS"}}, "amd64"
    )
    assert stubs == {
        "build": {
            "runs-on": "amd64",
            "outputs": {"digest": "${{ 'it''s ${{ x }}' }}"},
            "steps": [{"run": "true"}],
        }
    }


def test_act_argv_maps_each_label_to_the_host() -> None:
    argv = act_argv("act", "push", Path("/w.yaml"), Path("/e.json"), "build", ["amd64", "arm64"],
                    Path("/s"), Path("/v"), {"GITHUB_RUN_ID": "7"})  # fmt: skip
    assert argv == [
        "act", "push", "-W", "/w.yaml", "-e", "/e.json", "-j", "build", "--json", "--no-cache-server",
        "--action-offline-mode", "--pull=false",
        "-P", "amd64=-self-hosted", "-P", "arm64=-self-hosted", "--env", "GITHUB_RUN_ID=7",
        "--secret-file", "/s", "--var-file", "/v",
    ]  # fmt: skip


def test_github_env_names_the_run_server_and_repository() -> None:
    context = {"run_id": "12", "server_url": "http://127.0.0.1:8480", "repository": "debian-12",
               "run_attempt": "1", "actor": "diskci", "repository_owner": ""}  # fmt: skip
    env = github_env(context)
    assert env["GITHUB_RUN_ID"] == "12"
    assert env["GITHUB_SERVER_URL"] == "http://127.0.0.1:8480"
    assert env["GITHUB_REPOSITORY"] == "debian-12"
    assert "GITHUB_REPOSITORY_OWNER" not in env  # empty values are act's to default
    assert env["GITEA_ACTIONS"] == "true"
