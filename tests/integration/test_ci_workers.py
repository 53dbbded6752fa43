"""CI workers as NodeInstances on the ``local`` provider, against a real ``diskci platform serve``: a
provisioned worker's supervisor runs ``diskci runner register`` then ``runner run`` in its own
directory and session, the worker shows online with its labels and its host's statistics, a runner
that dies is restarted, and terminating it revokes its token at once, cancels its job in progress,
leaves no process in the process table and removes its directory; bad inputs make nothing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from served_platform import ServedPlatform, admin_token, platform_serve, serve_env

from diskci.platform.ci import scheduler
from diskci.platform.db.models import CiJob, CiRun, NodeInstance, NodePlatform
from diskci.platform.db.session import Database
from diskci.platform.providers import proctable
from diskci.platform.providers.local import MARK_VARIABLE
from polling import wait_until

TEST_SECRET_KEY = "test-secret-key-" + "w" * 32
RUNNER = "/api/actions/runner.v1.RunnerService"
WORKER = {
    "hostname": "ci-1",
    "provider": "local",
    "provider_region_id": "local",
    "provider_instance_type_id": "local.small",
    "build_targets": ["amd64", "arm64"],
}
SLEEPING_WORKFLOW = """\
on: push
jobs:
  build:
    runs-on: amd64
    steps:
      - name: Start
        run: echo started
      - name: Sleep
        run: sleep 120
"""


@dataclass
class Platform:
    served: ServedPlatform
    client: httpx.Client
    db: Database
    state: Path
    log: Path

    def call(self, name: str, body: dict[str, Any] | None = None, *, confirm: bool = False) -> httpx.Response:
        r = self.client.post(f"/api/v1/{name}", json=body or {})
        if r.status_code == 428 and confirm:
            cid = r.json()["confirmation_id"]
            r = self.client.post(f"/api/v1/{name}", json=body or {}, headers={"X-Diskci-Confirmation": cid})
        return r

    def ok(self, name: str, body: dict[str, Any] | None = None, *, confirm: bool = False) -> Any:
        r = self.call(name, body, confirm=confirm)
        assert r.status_code == 200, r.text
        return r.json()

    def worker(self, instance_id: int) -> dict[str, Any] | None:
        workers = self.ok("system_list_ci_workers", {"include_terminated": True})["workers"]
        return next((w for w in workers if w["id"] == instance_id), None)

    def status(self, instance_id: int) -> str | None:
        worker = self.worker(instance_id)
        return worker["status"] if worker else None

    def directory(self, instance_id: int) -> Path:
        return self.state / "workers" / str(instance_id)

    def detail(self, instance_id: int) -> str:
        log = self.directory(instance_id) / "runner.log"
        worker_log = log.read_text()[-3000:] if log.exists() else "(no runner.log)"
        return f"worker: {self.worker(instance_id)}\n{worker_log}\nplatform:\n{self.log.read_text()[-3000:]}"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    state = tmp_path / "platform"
    env = serve_env(state, TEST_SECRET_KEY)
    log = tmp_path / "serve.log"
    with platform_serve(env, log) as served:
        token = admin_token(state)
        db = Database(f"sqlite:///{state / 'platform.db'}")
        client = httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        p = Platform(served, client, db, state, log)
        try:
            yield p
        finally:
            _terminate_leftovers(p)
            client.close()
            db.dispose()


def _terminate_leftovers(p: Platform) -> None:
    """A failed test must not leave a worker running: terminate every worker not terminated."""
    with p.db.read_session() as s:
        ids = [n.id for n in s.query(NodeInstance).all() if n.status != "terminated"]
    for instance_id in ids:
        p.call("system_terminate_ci_worker", {"id": instance_id}, confirm=True)
    for instance_id in ids:
        wait_until(
            lambda i=instance_id: not p.directory(i).exists(), 60, what=f"worker {instance_id} removed"
        )


def _marked(directory: Path) -> list[int]:
    """Processes of this machine whose environment carries the worker's mark."""
    entry = f"{MARK_VARIABLE}={directory}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if entry in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _runner_pid(session: int) -> int | None:
    """The ``diskci runner run`` process of the worker's session."""
    for pid, sid in proctable.session_ids().items():
        args = _cmdline(pid)
        if sid == session and "runner" in args and "run" in args:
            return pid
    return None


def _provision(p: Platform, **changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = p.ok("system_provision_ci_worker", {**WORKER, **changes})
    return answer


def _online(p: Platform, instance_id: int) -> dict[str, Any]:
    worker: dict[str, Any] = wait_until(
        lambda: (w := p.worker(instance_id)) is not None and w["status"] == "online" and w,
        90,
        what=f"worker {instance_id} to be online",
        detail=lambda: p.detail(instance_id),
    )
    return worker


def test_a_provisioned_worker_runs_its_runner_and_termination_leaves_nothing(platform: Platform) -> None:
    p = platform
    answer = _provision(p)
    instance = answer["instance"]
    assert instance["status"] == "provisioning" and instance["modules"] == ["gitea-runner"]
    assert instance["build_targets"] == ["amd64", "arm64"] and answer["runner_token"]
    assert answer["registration_url"] == p.served.base or answer["registration_url"].startswith("http://")
    instance_id = instance["id"]
    directory = p.directory(instance_id)

    worker = _online(p, instance_id)
    assert worker["labels"] == ["amd64", "arm64"] and worker["current_job"] is None
    assert worker["provider"] == "local" and worker["provider_id"] == f"local-{instance_id}"
    # started as the module would start it: the unit and its 0600 EnvironmentFile, rendered here
    unit = (directory / "diskci-runner.service").read_text()
    assert "ExecStartPre=" in unit and " runner register " in unit and "RestartPreventExitStatus=3" in unit
    env_file = directory / "diskci-runner.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert answer["runner_token"] in env_file.read_text()
    assert answer["runner_token"] not in unit
    supervisor = json.loads((directory / "supervisor.pid").read_text())
    session = supervisor["pid"]
    assert os.getsid(session) == session  # its own session
    runner_pid = wait_until(
        lambda: _runner_pid(session),
        30,
        what="`diskci runner run` in its session",
        detail=lambda: p.detail(instance_id),
    )

    stats = wait_until(
        lambda: (
            (r := p.call("system_get_instance_stats", {"instance_id": instance_id})).status_code == 200
            and r.json()["worker"]
        ),
        30,
        what="the worker's host statistics",
        detail=lambda: p.detail(instance_id),
    )
    assert stats["memory"]["total"] > 0 and stats["disk"]["total"] > 0 and len(stats["load"]) == 3
    assert stats["stats_at"]

    # a runner that dies is restarted by its supervisor (Restart=on-failure)
    os.kill(runner_pid, 9)
    restarted = wait_until(
        lambda: (pid := _runner_pid(session)) is not None and pid != runner_pid and pid,
        30,
        what="the runner to be restarted",
        detail=lambda: p.detail(instance_id),
    )
    assert restarted

    credentials = json.loads((directory / "runner.json").read_text())
    headers = {"x-runner-uuid": credentials["uuid"], "x-runner-token": credentials["token"]}
    assert httpx.post(f"{p.served.base}{RUNNER}/Declare", json={"version": "t", "labels": []},
                      headers=headers).status_code == 200  # fmt: skip

    terminated = p.ok("system_terminate_ci_worker", {"id": instance_id}, confirm=True)
    assert terminated["status"] == "terminating" and terminated["task_id"]
    # the token is refused at once, before the machine is gone
    refused = httpx.post(f"{p.served.base}{RUNNER}/FetchTask", json={"tasksVersion": "0"}, headers=headers)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"

    wait_until(
        lambda: p.status(instance_id) == "terminated",
        60,
        what="terminated",
        detail=lambda: p.detail(instance_id),
    )
    assert not directory.exists()
    left = [pid for pid, sid in proctable.session_ids().items() if sid == session]
    assert left == [] and _marked(directory) == []
    with p.db.read_session() as s:
        node = s.get(NodeInstance, instance_id)
        assert node is not None and node.terminated_at is not None and node.status == "terminated"
    task = p.ok("system_get_task", {"task_id": terminated["task_id"]})
    assert task["status"] == "succeeded", task

    # terminating twice: its state, no error
    again = p.ok("system_terminate_ci_worker", {"id": instance_id}, confirm=True)
    assert again == {"task_id": terminated["task_id"], "status": "terminated", "cancelled_jobs": []}
    assert p.status(instance_id) == "terminated"
    assert instance_id not in [w["id"] for w in p.ok("system_list_ci_workers")["workers"]]
    events = [e["type"] for e in p.ok("system_list_recent_events", {"limit": 100})["events"]]
    assert {
        "ci_worker_provisioning",
        "ci_worker_provisioned",
        "ci_worker_terminating",
        "ci_worker_terminated",
    } <= set(events)


def _git_repo(path: Path) -> tuple[Path, str]:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "README").write_text("a worker test\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "first"], check=True, env=env)
    sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, env=env,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return path, sha


def test_terminating_a_worker_mid_job_cancels_the_job_and_leaves_no_process(
    platform: Platform, tmp_path: Path
) -> None:
    p = platform
    instance_id = _provision(p, hostname="ci-busy", build_targets=["amd64"])["instance"]["id"]
    _online(p, instance_id)
    repo, sha = _git_repo(tmp_path / "repo")
    with p.db.session() as s:
        node_platform = NodePlatform(
            name="debian-12",
            architectures=["amd64"],
            registry_repository="127.0.0.1:5000/ops/disk-images/debian-12",
            cosign_identity_regexp="^https://ci[.]example/.*$",
            cosign_oidc_issuer="https://ci.example",
            image_build_repository=str(repo),
        )
        s.add(node_platform)
        s.flush()
        run_id = scheduler.create_run(s, node_platform, SLEEPING_WORKFLOW, ref="refs/heads/main", sha=sha).id
    busy = wait_until(
        lambda: (w := p.worker(instance_id)) is not None and w["status"] == "busy" and w,
        60,
        what="the worker to take the job",
        detail=lambda: p.detail(instance_id),
    )
    assert busy["current_job"] == {"run_id": run_id, "job_name": "build"}
    directory = p.directory(instance_id)
    session = json.loads((directory / "supervisor.pid").read_text())["pid"]

    answer = p.ok("system_terminate_ci_worker", {"id": instance_id}, confirm=True)
    assert answer["cancelled_jobs"] == [{"run_id": run_id, "job_name": "build"}]
    with p.db.read_session() as s:
        job = s.query(CiJob).filter(CiJob.run_id == run_id).one()
        assert (job.status, job.conclusion) == ("completed", "cancelled")
        run = s.get(CiRun, run_id)
        assert run is not None and run.conclusion == "cancelled"
    events = p.ok("system_list_recent_events", {"type": ["ci_worker_job_cancelled"]})["events"]
    assert [(e["payload"]["run_id"], e["payload"]["job_name"]) for e in events] == [(run_id, "build")]

    wait_until(
        lambda: p.status(instance_id) == "terminated",
        60,
        what="terminated",
        detail=lambda: p.detail(instance_id),
    )
    assert not directory.exists()
    assert [pid for pid, sid in proctable.session_ids().items() if sid == session] == []
    assert _marked(directory) == []
    assert not any("sleep" in _cmdline(pid) and "120" in _cmdline(pid) for pid in proctable.session_ids())


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"provider_region_id": "mars-1"}, 400, ["provider_region_id", "'mars-1'", "choices: local"]),
        ({"provider_instance_type_id": "local.huge"}, 400, ["provider_instance_type_id", "local.small"]),
        ({"build_targets": ["amd64", "riscv64"]}, 400, ["build_targets", "'riscv64'", "amd64, arm64"]),
        ({"provider": "ec9"}, 400, ["provider 'ec9'", "choices: ec2, local"]),
        ({"hostname": "not a host"}, 400, ["hostname", "not a host name"]),
        ({"node_platform": "nope"}, 404, ["nope"]),
        ({"build_targets": []}, 400, ["build_targets"]),
    ],
)
def test_bad_inputs_are_refused_and_make_nothing(
    platform: Platform, changes: dict[str, Any], status: int, words: list[str]
) -> None:
    r = platform.call("system_provision_ci_worker", {**WORKER, **changes})
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["detail"], r.text
    with platform.db.read_session() as s:
        assert s.query(NodeInstance).count() == 0
    assert platform.ok("system_list_ci_workers", {"include_terminated": True})["workers"] == []


def test_a_hostname_in_use_a_missing_worker_and_missing_stats_are_clear_errors(platform: Platform) -> None:
    p = platform
    first = _provision(p)["instance"]["id"]
    r = p.call("system_provision_ci_worker", WORKER)
    assert r.status_code == 409 and "ci-1" in r.json()["detail"], r.text
    r = p.call("system_terminate_ci_worker", {"id": 999}, confirm=True)
    assert r.status_code == 404 and "999" in r.json()["detail"], r.text
    r = p.call("system_get_instance_stats", {"instance_id": 999})
    assert r.status_code == 404, r.text
    with p.db.session() as s:  # a worker whose runner never registered
        silent = NodeInstance(hostname="ci-silent", modules=["gitea-runner"], status="running")
        s.add(silent)
        s.flush()
        silent_id = silent.id
    r = p.call("system_get_instance_stats", {"instance_id": silent_id})
    assert r.status_code == 404 and "has sent no statistics yet" in r.json()["detail"], r.text
    p.ok("system_terminate_ci_worker", {"id": first}, confirm=True)
    wait_until(lambda: p.status(first) == "terminated", 60, what="terminated", detail=lambda: p.detail(first))
    again = _provision(p)  # a terminated worker's hostname may be used again
    assert again["instance"]["id"] != first
