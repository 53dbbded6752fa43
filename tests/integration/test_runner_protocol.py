"""The server side of Gitea's runner protocol, spoken as act_runner speaks it (Connect, JSON codec):
registration tokens work once, tasks go to runners with the labels, state and logs are recorded by
index, a cancelled job answers RESULT_CANCELLED, and the run follows its jobs."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.ci.workflow import render, workflow
from diskci.platform.ci import runners, scheduler
from diskci.platform.db.models import CiJob, CiLogRow, CiRun, NodePlatform, utcnow
from diskci.platform.db.session import Database
from diskci.spec import Architecture, load_spec

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "/api/actions/runner.v1.RunnerService"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _workflow() -> str:
    spec = load_spec(ROOT / "platforms/debian-12-amd64.yaml")
    arches = ("amd64", "arm64")
    spec = spec.model_copy(
        update={
            "architectures": tuple(Architecture(a) for a in arches),
            "kernel_package": {Architecture(a): f"linux-image-{a}" for a in arches},
        }
    )
    return render(workflow(spec, "platforms/debian-12-amd64.yaml"))


def _platform(db: Database) -> int:
    with db.session() as session:
        platform = NodePlatform(
            name="debian-12",
            architectures=["amd64", "arm64"],
            registry_repository="127.0.0.1:5000/ops/disk-images/debian-12",
            cosign_identity_regexp=".*",
            cosign_oidc_issuer="https://ci.example",
        )
        session.add(platform)
        session.flush()
        return platform.id


def _run(db: Database, text: str | None = None) -> int:
    platform_id = _platform(db)
    with db.session() as session:
        platform = session.get(NodePlatform, platform_id)
        assert platform is not None
        run = scheduler.create_run(session, platform, text or _workflow(), ref="refs/tags/v0.3.0", sha=SHA)
        return run.id


def _reg_token(db: Database, **kw: Any) -> str:
    with db.session() as session:
        return runners.new_registration_token(session, **kw)


class Runner:
    """A client speaking runner.v1 as act_runner does (lowerCamelCase protojson, int64 as strings)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.headers: dict[str, str] = {}

    def call(self, method: str, body: dict[str, Any], *, service: str = SERVICE) -> Any:
        return self.client.post(
            f"{service}/{method}",
            json=body,
            headers={"Connect-Protocol-Version": "1", **self.headers},
        )

    def register(self, token: str, labels: list[str], name: str = "worker") -> Any:
        r = self.call("Register", {"name": name, "token": token, "version": "v0.2.11", "labels": labels})
        if r.status_code == 200:
            runner = r.json()["runner"]
            self.headers = {"x-runner-uuid": runner["uuid"], "x-runner-token": runner["token"]}
        return r

    def fetch(self) -> dict[str, Any] | None:
        r = self.call("FetchTask", {"tasksVersion": "0"})
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["tasksVersion"], str)
        task: dict[str, Any] | None = r.json().get("task")
        return task

    def state(self, task_id: str, result: str = "RESULT_UNSPECIFIED", steps: int = 0, **kw: Any) -> Any:
        now = utcnow().isoformat().replace("+00:00", "Z")
        step_states = [
            {
                "id": str(i),
                "result": result,
                "startedAt": now,
                "stoppedAt": now,
                "logIndex": "0",
                "logLength": "1",
            }
            for i in range(steps)
        ]
        body = {"state": {"id": task_id, "result": result, "startedAt": now, "steps": step_states}, **kw}
        r = self.call("UpdateTask", body)
        assert r.status_code == 200, r.text
        return r.json()

    def log(self, task_id: str, index: int, contents: list[str], no_more: bool = False) -> int:
        now = "2026-12-01T10:00:00.123456789Z"
        rows = [{"time": now, "content": c} for c in contents]
        r = self.call("UpdateLog", {"taskId": task_id, "index": str(index), "rows": rows, "noMore": no_more})
        assert r.status_code == 200, r.text
        return int(r.json()["ackIndex"])


def _payload(task: dict[str, Any]) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(base64.b64decode(task["workflowPayload"]))
    return data


def _job(db: Database, task_id: str) -> CiJob:
    with db.read_session() as session:
        job = session.get(CiJob, int(task_id))
        assert job is not None
        session.expunge(job)
        return job


def test_ping_answers_without_credentials(platform_client: Any) -> None:
    r = Runner(platform_client).call(
        "Ping", {"data": "act_runner"}, service="/api/actions/ping.v1.PingService"
    )
    assert r.status_code == 200 and r.json() == {"data": "Hello, act_runner!"}


def test_a_registration_token_works_once_and_until_it_expires(
    platform_client: Any, platform_db: Database
) -> None:
    token = _reg_token(platform_db, labels=["amd64:host"])
    first = Runner(platform_client)
    r = first.register(token, labels=[])
    assert r.status_code == 200
    runner = r.json()["runner"]
    assert runner["labels"] == ["amd64:host"]  # the token's labels when the runner names none
    assert runner["id"].isdigit() and len(runner["token"]) == 40
    again = Runner(platform_client).register(token, labels=["amd64"])
    assert again.status_code == 401 and again.json()["code"] == "unauthenticated"
    old = _reg_token(platform_db, ttl=timedelta(seconds=-1))
    r = Runner(platform_client).register(old, labels=["amd64"])
    assert r.status_code == 401 and "expired" in r.json()["message"]
    r = Runner(platform_client).register("nope", labels=["amd64"])
    assert r.status_code == 401


def test_calls_need_the_runner_headers(platform_client: Any, platform_db: Database) -> None:
    runner = Runner(platform_client)
    assert runner.call("Declare", {"version": "1", "labels": ["x"]}).status_code == 401
    runner.register(_reg_token(platform_db), labels=["amd64"])
    good = dict(runner.headers)
    runner.headers["x-runner-token"] = "0" * 40
    r = runner.call("FetchTask", {})
    assert r.status_code == 401 and r.json() == {
        "code": "unauthenticated",
        "message": "unknown runner, or a wrong or revoked runner token",
    }
    runner.headers = good
    r = runner.call("Declare", {"version": "v0.2.12", "labels": ["amd64:host", "arm64:host"]})
    assert r.status_code == 200 and r.json()["runner"]["labels"] == ["amd64:host", "arm64:host"]
    r = platform_client.post(
        f"{SERVICE}/Declare", content=b"\x08\x01", headers={"Content-Type": "application/proto", **good}
    )
    assert r.status_code == 415


def test_a_run_goes_to_the_runners_with_its_labels_and_completes(
    platform_client: Any, platform_db: Database
) -> None:
    run_id = _run(platform_db)
    amd, arm = Runner(platform_client), Runner(platform_client)
    amd.register(_reg_token(platform_db), labels=["amd64:host"], name="amd")
    arm.register(_reg_token(platform_db), labels=["arm64:host"], name="arm")

    task = amd.fetch()
    assert task is not None
    single = _payload(task)
    assert list(single["jobs"]) == ["build"] and single["jobs"]["build"]["strategy"]["matrix"] == {
        "arch": ["amd64"]
    }
    context = task["context"]
    assert (
        context["event_name"],
        context["ref"],
        context["ref_name"],
        context["ref_type"],
        context["sha"],
    ) == (
        "push",
        "refs/tags/v0.3.0",
        "v0.3.0",
        "tag",
        SHA,
    )
    assert context["event"]["after"] == SHA and context["run_id"] == str(run_id) and context["job"] == "build"
    assert amd.fetch() is None  # arm64's build needs an arm64 runner, publish waits for both builds
    arm_task = arm.fetch()
    assert arm_task is not None and _payload(arm_task)["jobs"]["build"]["name"] == "build arm64"
    with platform_db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None and run.status == "in_progress" and run.started_at is not None

    assert amd.state(task["id"], steps=3)["state"]["result"] == "RESULT_UNSPECIFIED"
    assert amd.log(task["id"], 0, ["a", "b", "c"]) == 3
    assert amd.log(task["id"], 1, ["b", "c", "d"]) == 4  # a resend: only d is new
    assert amd.log(task["id"], 9, ["lost?"]) == 4  # a gap: nothing stored, the runner resends from 4
    assert amd.log(task["id"], 4, [], no_more=True) == 4
    with platform_db.read_session() as session:
        rows = session.query(CiLogRow).filter_by(job_id=int(task["id"])).order_by(CiLogRow.index).all()
        assert [(r.index, r.content) for r in rows] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    answer = amd.state(task["id"], "RESULT_SUCCESS", steps=3, outputs={"digest": "sha256:1"})
    assert answer == {"state": {"id": task["id"], "result": "RESULT_SUCCESS"}, "sentOutputs": ["digest"]}
    job = _job(platform_db, task["id"])
    assert (job.status, job.conclusion) == ("completed", "success")
    assert [s["conclusion"] for s in job.steps] == ["success"] * 3
    assert job.steps[1]["name"] == "Build" and job.log_complete
    assert amd.fetch() is None  # publish still waits for arm64

    arm.state(arm_task["id"], "RESULT_SUCCESS", steps=3)
    publish = amd.fetch()
    assert publish is not None and list(_payload(publish)["jobs"]) == ["publish"]
    assert publish["needs"] == {"build": {"outputs": {"digest": "sha256:1"}, "result": "RESULT_SUCCESS"}}
    amd.state(publish["id"], "RESULT_SUCCESS", steps=2)
    with platform_db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None
        assert (run.status, run.conclusion) == ("completed", "success") and run.completed_at is not None


def test_a_failed_job_skips_what_needs_it(platform_client: Any, platform_db: Database) -> None:
    run_id = _run(platform_db)
    both = Runner(platform_client)
    both.register(_reg_token(platform_db), labels=["amd64", "arm64"])
    first, second = both.fetch(), both.fetch()
    assert first is not None and second is not None
    both.state(first["id"], "RESULT_FAILURE", steps=1)
    both.state(second["id"], "RESULT_SUCCESS", steps=3)
    assert both.fetch() is None
    with platform_db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None and (run.status, run.conclusion) == ("completed", "failure")
        assert [(j.name, j.conclusion) for j in run.jobs] == [
            ("build amd64", "failure"),
            ("build arm64", "success"),
            ("publish", "skipped"),
        ]


def test_a_cancelled_job_answers_cancelled_and_a_stranger_cannot_touch_it(
    platform_client: Any, platform_db: Database
) -> None:
    run_id = _run(platform_db)
    runner, stranger = Runner(platform_client), Runner(platform_client)
    runner.register(_reg_token(platform_db), labels=["amd64"])
    stranger.register(_reg_token(platform_db), labels=["riscv64"])
    task = runner.fetch()
    assert task is not None
    r = stranger.call("UpdateTask", {"state": {"id": task["id"], "result": "RESULT_SUCCESS"}})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = stranger.call("UpdateLog", {"taskId": task["id"], "index": "0", "rows": []})
    assert r.status_code == 404
    with platform_db.session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None
        assert len(scheduler.cancel_run(session, run)) == 3
    assert runner.state(task["id"], "RESULT_SUCCESS", steps=3)["state"]["result"] == "RESULT_CANCELLED"
    assert runner.log(task["id"], 0, ["after the cancel"], no_more=True) == 1  # the last words are kept
    with platform_db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None and (run.status, run.conclusion) == ("completed", "cancelled")
        assert {j.conclusion for j in run.jobs} == {"cancelled"}
    assert runner.fetch() is None


def test_a_log_flood_is_capped_and_noted(
    platform_client: Any, platform_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "LOG_CAP_ROWS", 3)
    _run(platform_db)
    runner = Runner(platform_client)
    runner.register(_reg_token(platform_db), labels=["amd64"])
    task = runner.fetch()
    assert task is not None
    assert runner.log(task["id"], 0, [f"row {i}" for i in range(5)]) == 5
    assert runner.log(task["id"], 5, ["row 5"]) == 6
    with platform_db.read_session() as session:
        rows = session.query(CiLogRow).filter_by(job_id=int(task["id"])).order_by(CiLogRow.index).all()
        assert [r.content for r in rows][:3] == ["row 0", "row 1", "row 2"]
        assert len(rows) == 4 and "capped at 3 rows" in rows[3].content
    assert _job(platform_db, task["id"]).log_truncated


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        ("UpdateTask", {"state": {"id": "x"}}, "state.id: not an int64"),
        ("UpdateTask", {"state": {"id": "1", "result": "RESULT_MAYBE"}}, "not a runner.v1.Result"),
        ("UpdateLog", {"taskId": "1", "rows": [{"time": "yesterday"}]}, "not an RFC 3339 time"),
        ("UpdateLog", {"taskId": "999999", "rows": []}, "not a task of this runner"),
        ("Declare", {"labels": ["has space"]}, "without spaces"),
    ],
)
def test_bad_messages_are_connect_errors(
    platform_client: Any, platform_db: Database, method: str, body: dict[str, Any], message: str
) -> None:
    runner = Runner(platform_client)
    runner.register(_reg_token(platform_db), labels=["amd64"])
    r = runner.call(method, body)
    assert 400 <= r.status_code < 500 and message in r.json()["message"], r.text


def test_a_job_whose_worker_vanished_fails_worker_lost(platform_client: Any, platform_db: Database) -> None:
    run_id = _run(platform_db)
    runner = Runner(platform_client)
    runner.register(_reg_token(platform_db), labels=["amd64", "arm64"])
    first, second = runner.fetch(), runner.fetch()
    assert first is not None and second is not None
    runner.state(second["id"], "RESULT_SUCCESS", steps=3)
    with platform_db.session() as session:
        assert scheduler.expire_leases(session) == []  # leases still running
        lost = scheduler.expire_leases(session, now=utcnow() + scheduler.JOB_LEASE + timedelta(seconds=1))
        assert [j.id for j in lost] == [int(first["id"])]
    job = _job(platform_db, first["id"])
    assert (job.conclusion, job.failure_reason) == ("failure", "worker_lost")
    with platform_db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None and (run.status, run.conclusion) == ("completed", "failure")


def test_the_run_and_its_logs_read_through_the_actions(
    platform_client: Any, platform_db: Database, make_token: Any
) -> None:
    run_id = _run(platform_db)
    runner = Runner(platform_client)
    runner.register(_reg_token(platform_db), labels=["amd64"], name="worker-1")
    task = runner.fetch()
    assert task is not None
    runner.state(task["id"], steps=3)
    runner.log(task["id"], 0, [f"line {i}" for i in range(5)])
    viewer = {"Authorization": f"Bearer {make_token('viewer')}"}
    r = platform_client.post("/api/v1/get_gitea_workflow_run", headers=viewer, json={"run_id": run_id})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["status"], out["conclusion"], out["ref"], out["publication_id"]) == (
        "in_progress",
        None,
        "refs/tags/v0.3.0",
        None,
    )
    build, arm, publish = out["jobs"]
    assert (build["name"], build["status"], build["runner"]) == ("build amd64", "in_progress", "worker-1")
    assert [s["name"] for s in build["steps"]] == ["Check out", "Build", "Push this architecture's part"]
    assert build["steps"][0]["status"] == "in_progress"
    assert (arm["status"], publish["status"]) == ("queued", "waiting")

    def logs(offset: int, limit: int = 3) -> dict[str, Any]:
        body = {"run_id": run_id, "job_name": "build amd64", "offset": offset, "limit": limit}
        r = platform_client.post("/api/v1/get_gitea_job_logs", headers=viewer, json=body)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    assert logs(0) == {"logs": ["line 0", "line 1", "line 2"], "next_offset": 3, "complete": False}
    assert logs(3) == {"logs": ["line 3", "line 4"], "next_offset": 5, "complete": False}
    runner.log(task["id"], 5, [], no_more=True)
    assert logs(5) == {"logs": [], "next_offset": 5, "complete": True}
    r = platform_client.post(
        "/api/v1/get_gitea_job_logs", headers=viewer, json={"run_id": run_id, "job_name": "nope"}
    )
    assert r.status_code == 404 and "its jobs: build amd64, build arm64, publish" in r.json()["detail"]
    r = platform_client.post("/api/v1/get_gitea_workflow_run", headers=viewer, json={"run_id": 999999})
    assert r.status_code == 404 and r.json()["error"] == "CiRunNotFound"
