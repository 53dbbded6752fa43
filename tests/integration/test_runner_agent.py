"""``diskci runner`` against a real ``diskci platform serve``: registered with a one-time token, run as a
real process, it runs each job of a run with act (host mode) from a git repository made here, streams
logs and steps, obeys a cancel within 10 s leaving no process behind, drains on SIGTERM, sends
heartbeats, and exits 3 once its credentials are revoked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from served_platform import ServedPlatform, platform_serve, serve_env

from diskci.platform.ci import runners, scheduler
from diskci.platform.db.models import CiLogRow, CiRun, CiRunner, NodePlatform, utcnow
from diskci.platform.db.session import Database
from diskci.runner import state as runner_state
from polling import wait_until

TEST_SECRET_KEY = "test-secret-key-" + "k" * 32

MATRIX_WORKFLOW = """\
on: push
jobs:
  build:
    name: build ${{ matrix.arch }}
    runs-on: ${{ matrix.arch }}
    strategy:
      matrix:
        arch: [amd64, arm64]
    steps:
      - name: Check out
        uses: actions/checkout@v4
      - name: Hello
        run: |
          echo "hello ${{ matrix.arch }}"
          cat marker.txt
          diskci --version
  publish:
    needs: build
    runs-on: amd64
    steps:
      - name: Publish
        run: |
          echo "published after the builds"
          echo "id-token url $ACTIONS_ID_TOKEN_REQUEST_URL"
          python -c "$ASK"
        env:
          ASK: |
            import json, os, urllib.request
            url = os.environ["ACTIONS_ID_TOKEN_REQUEST_URL"] + "?audience=sigstore"
            auth = {"Authorization": "Bearer " + os.environ["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]}
            answer = json.load(urllib.request.urlopen(urllib.request.Request(url, headers=auth)))
            print("id token parts", len(answer["value"].split(".")))
"""

FAILING_WORKFLOW = """\
on: push
jobs:
  build:
    runs-on: amd64
    steps:
      - name: Fine
        run: echo fine
      - name: Broken
        run: exit 3
      - name: Never
        run: echo never
"""


def sleeping_workflow(seconds: str) -> str:
    return f"""\
on: push
jobs:
  build:
    runs-on: amd64
    steps:
      - name: Start
        run: echo started
      - name: Sleep
        run: sleep {seconds} & sleep {seconds}
"""


@dataclass
class Platform:
    served: ServedPlatform
    db: Database
    tmp: Path


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    state = tmp_path / "platform"
    env = serve_env(state, TEST_SECRET_KEY)
    with platform_serve(env, tmp_path / "serve.log", consumer=False) as served:
        db = Database(f"sqlite:///{state / 'platform.db'}")
        try:
            yield Platform(served, db, tmp_path)
        finally:
            db.dispose()


def git_repo(path: Path) -> tuple[Path, str]:
    """A repository with one commit holding marker.txt; its path and the commit's sha."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "marker.txt").write_text("the marker of this commit\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "first"], check=True, env=env)
    sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, env=env,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return path, sha


def create_run(p: Platform, workflow: str, *, sha: str | None = None) -> int:
    repo, head = git_repo(p.tmp / f"repo-{time.monotonic_ns()}")
    with p.db.session() as session:
        platform = NodePlatform(
            name=f"debian-{time.monotonic_ns()}",
            architectures=["amd64", "arm64"],
            registry_repository="127.0.0.1:5000/ops/disk-images/debian-12",
            cosign_identity_regexp=".*",
            cosign_oidc_issuer="https://ci.example",
            image_build_repository=str(repo),
        )
        session.add(platform)
        session.flush()
        run = scheduler.create_run(session, platform, workflow, ref="refs/heads/main", sha=sha or head)
        return run.id


def runner_cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DISKCI_RUNNER_TOKEN"}
    if token is not None:
        env["DISKCI_RUNNER_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "diskci", "runner", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def register(p: Platform, name: str = "worker", labels: str = "amd64,arm64") -> Path:
    state_dir = p.tmp / f"runner-{name}"
    with p.db.session() as session:
        token = runners.new_registration_token(session)
    done = runner_cli("register", "--url", p.served.base, "--name", name, "--labels", labels,
                      "--state-dir", str(state_dir), token=token)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return state_dir


@contextmanager
def agent(state_dir: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    log_path = state_dir / "agent.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "diskci", "runner", "run", "--state-dir", str(state_dir), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def agent_log(state_dir: Path) -> str:
    return (state_dir / "agent.log").read_text()[-4000:]


def run_of(p: Platform, run_id: int) -> dict[str, Any]:
    with p.db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None
        jobs = {}
        for job in run.jobs:
            rows = session.query(CiLogRow).filter_by(job_id=job.id).order_by(CiLogRow.index).all()
            jobs[job.name] = {
                "id": job.id,
                "status": job.status,
                "conclusion": job.conclusion,
                "steps": [(s["name"], s.get("conclusion")) for s in job.steps],
                "log": [r.content for r in rows],
                "log_complete": job.log_complete,
            }
        return {"status": run.status, "conclusion": run.conclusion, "jobs": jobs}


def wait_completed(p: Platform, run_id: int, state_dir: Path, timeout: float = 60) -> dict[str, Any]:
    def completed() -> dict[str, Any] | None:
        run = run_of(p, run_id)
        done = run["status"] == "completed" and all(j["log_complete"] or j["conclusion"] == "skipped"
                                                    for j in run["jobs"].values())  # fmt: skip
        return run if done else None

    return wait_until(
        completed, timeout, what=f"run {run_id} to complete", detail=lambda: agent_log(state_dir)
    )


def processes_with(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (the process table, as ps reads it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def test_a_run_with_a_matrix_and_needs_completes_with_steps_and_logs(platform: Platform) -> None:
    run_id = create_run(platform, MATRIX_WORKFLOW)
    state_dir = register(platform)
    with agent(state_dir):
        run = wait_completed(platform, run_id, state_dir)
    assert (run["status"], run["conclusion"]) == ("completed", "success"), run
    jobs = run["jobs"]
    assert set(jobs) == {"build amd64", "build arm64", "publish"}
    for arch in ("amd64", "arm64"):
        build = jobs[f"build {arch}"]
        assert build["steps"] == [("Check out", "success"), ("Hello", "success")]
        assert f"hello {arch}" in build["log"] and "the marker of this commit" in build["log"]
        assert any(line.startswith("diskci ") for line in build["log"])  # diskci is on the job's PATH
    assert jobs["publish"]["conclusion"] == "success"
    publish_log = jobs["publish"]["log"]
    assert "published after the builds" in publish_log
    assert f"id-token url {platform.served.base}/api/actions/id-token" in publish_log  # contract item 2
    assert "id token parts 3" in publish_log, publish_log  # the job's runtime token buys a JWT
    text = agent_log(state_dir)
    assert text.count("fetched task") == 3 and text.count(": success") == 3


def test_a_failing_step_fails_the_job_and_skips_the_rest(platform: Platform) -> None:
    run_id = create_run(platform, FAILING_WORKFLOW)
    state_dir = register(platform)
    with agent(state_dir):
        run = wait_completed(platform, run_id, state_dir)
    assert (run["status"], run["conclusion"]) == ("completed", "failure")
    (job,) = run["jobs"].values()
    assert job["steps"] == [("Fine", "success"), ("Broken", "failure"), ("Never", "skipped")]
    assert "fine" in job["log"] and "exit status 3" in job["log"]


def test_a_missing_commit_fails_at_checkout_with_gits_words(platform: Platform) -> None:
    run_id = create_run(platform, FAILING_WORKFLOW, sha="0" * 40)
    state_dir = register(platform)
    with agent(state_dir):
        run = wait_completed(platform, run_id, state_dir)
    (job,) = run["jobs"].values()
    assert job["conclusion"] == "failure"
    assert f"fatal: reference is not a tree: {'0' * 40}" in job["log"], job["log"]


def _wait_running(platform: Platform, run_id: int, state_dir: Path, marker: str) -> None:
    """Until the job's sleep runs and the platform knows its first step succeeded."""

    def sleeping() -> bool:
        jobs = run_of(platform, run_id)["jobs"].values()
        started = any(j["status"] == "in_progress" and j["steps"][0][1] == "success" for j in jobs)
        return bool(processes_with(marker)) and started

    wait_until(sleeping, 30, what="the sleep step to run", detail=lambda: agent_log(state_dir))


def test_a_cancel_stops_the_job_within_10_s_and_leaves_no_process(platform: Platform) -> None:
    marker = "61.4159"
    run_id = create_run(platform, sleeping_workflow(marker))
    state_dir = register(platform)
    with agent(state_dir) as proc:
        _wait_running(platform, run_id, state_dir, marker)
        with platform.db.session() as session:
            run = session.get(CiRun, run_id)
            assert run is not None
            scheduler.cancel_run(session, run)
        cancelled_at = time.monotonic()
        wait_until(lambda: not processes_with(marker), 10, what="the job's processes to be gone")
        run = wait_completed(platform, run_id, state_dir, timeout=10 - (time.monotonic() - cancelled_at))
        assert time.monotonic() - cancelled_at < 10
        assert proc.poll() is None  # the runner goes on serving
    (job,) = run["jobs"].values()
    assert job["conclusion"] == "cancelled" and job["steps"][0] == ("Start", "success")
    assert any("cancelling" in line for line in job["log"])


@pytest.mark.parametrize(("seconds", "drain", "conclusion"), [("2.718", "600", "success"),
                                                              ("62.718", "1", "cancelled")])  # fmt: skip
def test_sigterm_drains_the_job_in_hand(
    platform: Platform, seconds: str, drain: str, conclusion: str
) -> None:
    run_id = create_run(platform, sleeping_workflow(seconds))
    state_dir = register(platform)
    with agent(state_dir, "--drain-timeout", drain) as proc:
        _wait_running(platform, run_id, state_dir, seconds)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, agent_log(state_dir)
    run = run_of(platform, run_id)
    (job,) = run["jobs"].values()
    assert (job["conclusion"], job["log_complete"]) == (conclusion, True), agent_log(state_dir)
    assert not processes_with(seconds)
    assert "stopping: no more tasks" in agent_log(state_dir)


def test_registration_tokens_work_once_and_a_state_dir_is_kept(platform: Platform) -> None:
    with platform.db.session() as session:
        token = runners.new_registration_token(session, labels=["amd64"])
    first = platform.tmp / "first"
    done = runner_cli("register", "--url", platform.served.base, "--name", "one", "--state-dir", str(first),
                      "--json", token=token)  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = runner_state.load(first)
    assert saved.labels == ["amd64"] and (first / "runner.json").stat().st_mode & 0o777 == 0o600
    assert saved.token not in done.stdout
    again = runner_cli("register", "--url", platform.served.base, "--state-dir", str(platform.tmp / "second"),
                       token=token)  # fmt: skip
    assert again.returncode == 3
    assert "registration token unknown, already used or expired" in " ".join(again.stderr.split())
    assert not (platform.tmp / "second" / "runner.json").exists()
    kept = runner_cli("register", "--url", platform.served.base, "--state-dir", str(first), token="other")
    assert kept.returncode == 0 and "already registered" in kept.stdout
    assert runner_state.load(first) == saved
    status = runner_cli("status", "--state-dir", str(first), "--json")
    assert status.returncode == 0 and saved.uuid in status.stdout and saved.token not in status.stdout
    missing = runner_cli("status", "--state-dir", str(platform.tmp / "nowhere"))
    assert missing.returncode == 2 and "no runner is registered here" in missing.stderr


def test_heartbeats_store_host_stats_and_a_revoked_runner_exits_3(platform: Platform) -> None:
    state_dir = register(platform)
    saved = runner_state.load(state_dir)
    with agent(state_dir) as proc:

        def stats() -> dict[str, Any] | None:
            with platform.db.read_session() as session:
                runner = session.query(CiRunner).filter_by(uuid=saved.uuid).one()
                return runner.stats

        got = wait_until(stats, 20, what="a heartbeat", detail=lambda: agent_log(state_dir))
        assert got["disk"]["path"] == str(state_dir / "work") and got["disk"]["total"] >= got["disk"]["free"]
        assert got["memory"]["total"] > 0 and len(got["load"]) == 3
        url = f"{platform.served.base}/api/actions/diskci.v1.WorkerService/Heartbeat"
        headers = {"x-runner-uuid": saved.uuid, "x-runner-token": saved.token}
        bad = httpx.post(url, json={**got, "load": [1, 2]}, headers=headers)
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"
        assert "load" in bad.json()["message"]
        bad = httpx.post(url, json={**got, "disk": {**got["disk"], "free": -1}}, headers=headers)
        assert bad.status_code == 400 and "disk.free" in bad.json()["message"]
        assert httpx.post(url, json=got, headers={**headers, "x-runner-token": "0" * 40}).status_code == 401
        big = httpx.post(
            url, content=b"{" + b" " * 20000 + b"}", headers={**headers, "content-type": "application/json"}
        )
        assert big.status_code == 413
        with platform.db.session() as session:
            runner = session.query(CiRunner).filter_by(uuid=saved.uuid).one()
            runner.revoked_at = utcnow()
        assert proc.wait(timeout=30) == 3, agent_log(state_dir)
    assert "refused" in agent_log(state_dir)
