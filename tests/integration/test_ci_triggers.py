"""Starting and controlling CI runs on a served platform: bootstrap at a ref of the image-build repository
(made with ``diskci ci init-repo``), a real ``git push`` of a tag through the ``diskci ci hook``
post-receive hook, push webhooks refused or ignored by reason, cancel, and ``diskci ci watch --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from served_platform import ServedPlatform, admin_token, platform_serve, serve_env
from sqlalchemy import func, select

from diskci.ci.pushhook import push_event, push_signature
from diskci.platform.ci import runners, scheduler
from diskci.platform.db.models import CiJob, CiRun, CiRunner, Event
from diskci.platform.db.session import Database

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "ci-triggers-secret-key-" + "q" * 32
PLATFORM = "debian-12-amd64"
IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
CLI = [sys.executable, "-m", "diskci.cli.main"]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip() + done.stderr.strip()


@dataclass
class Ci:
    platform: ServedPlatform
    state: Path
    db: Database
    auth: dict[str, str]
    bare: Path
    work: Path
    secret: str

    def action(self, name: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.platform.base}/api/v1/{name}", json=body, headers={**self.auth, **headers}, timeout=60
        )

    def runs(self) -> int:
        with self.db.read_session() as s:
            return int(s.scalar(select(func.count()).select_from(CiRun)) or 0)

    def push_event(self, ref: str, sha: str, *, secret: str | None = None, platform: str = PLATFORM) -> Any:
        body = json.dumps(push_event("0" * 40, sha, ref, repository=self.bare, pusher="test")).encode()
        signature = push_signature(secret or self.secret, body)
        return httpx.post(
            f"{self.platform.base}/api/v1/ci/push/{platform}",
            content=body,
            headers={"Content-Type": "application/json", "X-Gitea-Signature": signature},
            timeout=60,
        )


def _two_arch_spec(tmp: Path) -> Path:
    data = yaml.safe_load((ROOT / f"platforms/{PLATFORM}.yaml").read_text())
    data["architectures"] = ["amd64", "arm64"]
    data["kernel_package"] = {"amd64": "linux-image-amd64", "arm64": "linux-image-arm64"}
    spec = tmp / f"{PLATFORM}.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


@pytest.fixture
def ci(tmp_path: Path) -> Iterator[Ci]:
    state = tmp_path / "state"
    images = tmp_path / "images"
    subprocess.run(
        [*CLI, "ci", "init-repo", str(images), "--spec", str(_two_arch_spec(tmp_path))], check=True
    )
    bare = tmp_path / "images.git"
    _git(tmp_path, "clone", "--quiet", "--bare", str(images), str(bare))
    work = tmp_path / "work"
    _git(tmp_path, "clone", "--quiet", str(bare), str(work))
    with platform_serve(serve_env(state, SECRET_KEY), tmp_path / "platform.log", consumer=False) as served:
        db = Database(f"sqlite:///{state / 'platform.db'}")
        auth = {"Authorization": f"Bearer {admin_token(state)}"}
        for name, arches in ((PLATFORM, ["amd64", "arm64"]), ("amd64-only", ["amd64"]), ("no-ci", ["amd64"])):
            r = httpx.post(
                f"{served.base}/api/v1/system_create_node_platform",
                headers=auth,
                json={
                    "name": name,
                    "architectures": arches,
                    "registry_repository": f"127.0.0.1:5000/ops/disk-images/{name}",
                    "cosign_identity_regexp": "^https://ci\\.example/ops/images/.+$",
                    "cosign_oidc_issuer": "https://ci.example",
                },
            )
            assert r.status_code == 200, r.text
        secrets = {}
        for name in (PLATFORM, "amd64-only"):
            r = httpx.post(
                f"{served.base}/api/v1/system_configure_disk_image_ci",
                headers=auth,
                json={
                    "node_platform": name,
                    "image_build_repository": str(bare),
                    "ci_variables": {"DISKCI_REGISTRY": "127.0.0.1:5000"},
                },
                timeout=60,
            )
            assert r.status_code == 200, r.text
            secrets[name] = r.json()["push_secret"]
        try:
            yield Ci(served, state, db, auth, bare, work, secrets[PLATFORM])
        finally:
            db.dispose()


def test_configure_checks_the_repository_and_shows_the_secret_once(ci: Ci, tmp_path: Path) -> None:
    r = ci.action(
        "system_configure_disk_image_ci", {"node_platform": "no-ci", "image_build_repository": "/nope"}
    )
    assert r.status_code == 400 and r.json()["error"] == "UnreadableRepository", r.text
    r = ci.action(
        "system_configure_disk_image_ci", {"node_platform": PLATFORM, "ci_variables": {"bad-name": "x"}}
    )
    assert r.status_code == 400 and r.json()["error"] == "InvalidCiVariables", r.text
    r = ci.action("system_configure_disk_image_ci", {"node_platform": PLATFORM})
    assert r.status_code == 200 and r.json()["push_secret"] is None  # not rotated: not shown again
    assert r.json()["push_url"].endswith(f"/api/v1/ci/push/{PLATFORM}")
    r = ci.action("system_get_node_platform", {"name": PLATFORM})
    assert r.json()["image_build_repository"] == str(ci.bare) and r.json()["has_push_secret"] is True
    assert "push_secret" not in r.json()


def test_bootstrap_makes_a_run_with_one_build_per_arch_then_publish(ci: Ci) -> None:
    r = ci.action("bootstrap_disk_image_ci", {"node_platform": PLATFORM, "ref": "main"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (
        out["status"] == "queued" and out["ref"] == "refs/heads/main" and out["event"] == "workflow_dispatch"
    )
    assert out["jobs"] == ["build amd64", "build arm64", "publish"]
    assert out["sha"] == _git(ci.work, "rev-parse", "HEAD")
    run = ci.action("get_gitea_workflow_run", {"run_id": out["run_id"]}).json()
    # no CI worker is online: each queued job says which label it waits for
    assert [(j["name"], j["waiting_for_labels"]) for j in run["jobs"]] == [
        ("build amd64", ["amd64"]),
        ("build arm64", ["arm64"]),
        ("publish", []),  # waiting for the builds, not for a worker
    ]
    r = ci.action(
        "bootstrap_disk_image_ci",
        {"node_platform": PLATFORM, "ref": "main", "arches": ["arm64"], "reproducibility_check": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["jobs"] == ["build arm64", "build arm64 (rebuild)", "publish"]


def test_the_task_carries_the_clone_url_vars_and_webhook_secret(ci: Ci) -> None:
    hook = ci.action("provision_disk_image_webhook", {"platform": PLATFORM}).json()
    ci.action("bootstrap_disk_image_ci", {"node_platform": PLATFORM, "ref": "main", "arches": ["amd64"]})
    with ci.db.session() as s:
        token = runners.new_registration_token(s)
    base = f"{ci.platform.base}/api/actions/runner.v1.RunnerService"
    r = httpx.post(f"{base}/Register", json={"name": "w1", "token": token, "labels": ["amd64"]})
    runner = r.json()["runner"]
    headers = {"x-runner-uuid": runner["uuid"], "x-runner-token": runner["token"]}
    task = httpx.post(f"{base}/FetchTask", json={"tasksVersion": "0"}, headers=headers).json()["task"]
    assert task["context"]["diskci_clone_url"] == str(ci.bare)
    assert task["vars"] == {"DISKCI_REGISTRY": "127.0.0.1:5000", "DISKCI_WEBHOOK_URL": hook["url"]}
    assert task["secrets"] == {"DISKCI_WEBHOOK_SECRET": hook["secret"]}


@pytest.mark.parametrize(
    ("body", "status", "error", "detail"),
    [
        ({"node_platform": "nope", "ref": "main"}, 404, "PlatformNotFound", "nope"),
        ({"node_platform_id": 999, "ref": "main"}, 404, "PlatformNotFound", "999"),
        ({"node_platform": PLATFORM, "ref": "v9.9.9"}, 404, "UnknownRef", "v9.9.9"),
        (
            {"node_platform": "amd64-only", "ref": "main", "arches": ["arm64"]},
            400,
            "UndefinedArchitecture",
            "arm64",
        ),
        ({"node_platform": "no-ci", "ref": "main"}, 409, "CiNotConfigured", "no image-build repository"),
        ({"node_platform": PLATFORM, "node_platform_id": 1, "ref": "main"}, 400, "InvalidRequest", "one of"),
    ],
)
def test_bootstrap_refuses_bad_input_and_makes_no_run(
    ci: Ci, body: dict[str, Any], status: int, error: str, detail: str
) -> None:
    r = ci.action("bootstrap_disk_image_ci", body)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert detail in r.json()["detail"]
    assert ci.runs() == 0


def test_a_pushed_tag_makes_one_run_through_the_hook(ci: Ci, tmp_path: Path) -> None:
    secret_file = tmp_path / "push-secret"
    secret_file.write_text(ci.secret + "\n")
    secret_file.chmod(0o600)
    installed = subprocess.run(
        [*CLI, "ci", "hook", str(ci.bare), "--url", ci.platform.base, "--platform", PLATFORM,
         "--secret-file", str(secret_file), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    hook = Path(json.loads(installed.stdout)["hook"])
    assert ci.secret not in hook.read_text() and os.access(hook, os.X_OK)

    _git(ci.work, "tag", "v0.3.0")
    pushed = _git(ci.work, "push", "origin", "v0.3.0")
    assert "remote: diskci: refs/tags/v0.3.0: CI run" in pushed, pushed
    assert ci.runs() == 1
    with ci.db.read_session() as s:
        run = s.scalars(select(CiRun)).one()
        assert (run.event, run.ref, run.trigger_key) == (
            "push",
            "refs/tags/v0.3.0",
            f"push:refs/tags/v0.3.0:{_git(ci.work, 'rev-parse', 'HEAD')}",
        )
        assert [j.name for j in run.jobs] == ["build amd64", "build arm64", "publish"]
        run_id = run.id
    # deleted and pushed again at the same commit: the deletion is ignored, the push finds its run
    deleted = _git(ci.work, "push", "origin", "--delete", "v0.3.0")
    assert "ignored: refs/tags/v0.3.0 was deleted" in deleted, deleted
    again = _git(ci.work, "push", "origin", "v0.3.0")
    assert f"CI run {run_id}" in again and "the same run" in again, again
    # a branch push and a tag the workflow does not run on are ignored
    (ci.work / "notes.txt").write_text("a change on main\n")
    _git(ci.work, "add", "notes.txt")
    _git(ci.work, "commit", "--quiet", "-m", "notes")
    _git(ci.work, "tag", "nightly")
    ignored = _git(ci.work, "push", "origin", "main", "nightly")
    assert "refs/heads/main: ignored: refs/heads/main is not a tag" in ignored, ignored
    assert "refs/tags/nightly: ignored: tag nightly does not match" in ignored, ignored
    assert ci.runs() == 1


def test_push_webhooks_are_verified_bounded_and_deduplicated(ci: Ci) -> None:
    sha = _git(ci.work, "rev-parse", "HEAD")
    _git(ci.work, "tag", "v1.0.0")
    _git(ci.work, "push", "--quiet", "origin", "v1.0.0")  # no hook installed: the repository only
    first = ci.push_event("refs/tags/v1.0.0", sha)
    assert first.status_code == 201 and first.json()["duplicate"] is False, first.text
    second = ci.push_event("refs/tags/v1.0.0", sha)
    assert second.status_code == 200 and second.json() == {**first.json(), "duplicate": True}
    assert ci.runs() == 1

    bad = ci.push_event("refs/tags/v1.0.0", sha, secret="not-the-secret")
    assert bad.status_code == 401 and bad.json()["error"] == "BadPushSignature"
    body = (
        b'{"ref": "refs/tags/v1.0.0", "after": "' + sha.encode() + b'", "pad": "' + b"x" * 2_000_000 + b'"}'
    )
    big = httpx.post(
        f"{ci.platform.base}/api/v1/ci/push/{PLATFORM}",
        content=body,
        headers={"Content-Type": "application/json", "X-Gitea-Signature": push_signature(ci.secret, body)},
    )
    assert big.status_code == 413 and big.json()["error"] == "BodyTooLarge"
    unknown = ci.push_event("refs/tags/v1.0.0", sha, platform="nope")
    assert unknown.status_code == 404 and unknown.json()["error"] == "PlatformNotFound"
    stranger = ci.push_event("refs/tags/v1.0.0", "e" * 40)
    assert stranger.status_code == 404 and stranger.json()["error"] == "UnknownRef", stranger.text
    assert "e" * 40 in stranger.json()["detail"]
    branch = ci.push_event("refs/heads/main", sha)
    assert branch.status_code == 202 and "not a tag" in branch.json()["ignored"]
    assert ci.runs() == 1


def test_cancel_is_confirmed_and_a_completed_run_cannot_be_cancelled(ci: Ci) -> None:
    run_id = ci.action("bootstrap_disk_image_ci", {"node_platform": PLATFORM, "ref": "main"}).json()["run_id"]
    asked = ci.action("system_cancel_disk_image_ci_run", {"run_id": run_id})
    assert asked.status_code == 428, asked.text
    done = ci.action(
        "system_cancel_disk_image_ci_run",
        {"run_id": run_id},
        **{"X-Diskci-Confirmation": asked.json()["confirmation_id"]},
    )
    assert done.status_code == 200, done.text
    assert done.json()["conclusion"] == "cancelled"
    assert done.json()["cancelled_jobs"] == ["build amd64", "build arm64", "publish"]
    # A completed run is refused at once: no confirmation is asked for what could never be done.
    again = ci.action("system_cancel_disk_image_ci_run", {"run_id": run_id})
    assert again.status_code == 409 and again.json()["error"] == "RunAlreadyCompleted", again.text
    assert "confirmation_id" not in again.json()
    with ci.db.read_session() as s:
        assert s.scalar(select(Event).where(Event.type == "ci_run_cancelled")) is not None

    watched = subprocess.run(
        [*CLI, "ci", "watch", str(run_id), "--json", "--state-dir", str(ci.state), "--timeout", "30"],
        capture_output=True, text=True, env=serve_env(ci.state, SECRET_KEY), timeout=60,
    )  # fmt: skip
    assert watched.returncode == 1, watched.stderr
    last = json.loads(watched.stdout.splitlines()[-1])
    assert last["type"] == "run" and last["run"]["conclusion"] == "cancelled"


def test_watch_follows_a_run_to_success(ci: Ci) -> None:
    run_id = ci.action(
        "bootstrap_disk_image_ci", {"node_platform": PLATFORM, "ref": "main", "arches": ["amd64"]}
    ).json()["run_id"]
    with ci.db.session() as s:  # a worker runs both jobs (the runner protocol's own tests drive it over HTTP)
        token = runners.new_registration_token(s)
        runner, _ = runners.register(s, registration_token=token, name="w1", labels=["amd64"])
    for _ in range(2):
        with ci.db.session() as s:
            runner_row = s.get(CiRunner, runner.id)
            assert runner_row is not None
            job = scheduler.claim_job(s, runner_row)
            assert job is not None
            rows = [scheduler.LogRow(time=None, content=f"{job.name}: line {i}") for i in range(3)]
            scheduler.append_log(s, job, index=0, rows=rows, no_more=True)
            steps = [scheduler.StepReport(index=i, conclusion="success") for i in range(len(job.steps))]
            scheduler.record_state(s, job, conclusion="success", steps=steps)
    watched = subprocess.run(
        [*CLI, "ci", "watch", str(run_id), "--json", "--state-dir", str(ci.state), "--timeout", "30"],
        capture_output=True, text=True, env=serve_env(ci.state, SECRET_KEY), timeout=60,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stdout + watched.stderr
    changes = [json.loads(line) for line in watched.stdout.splitlines()]
    logs = [(c["job"], c["line"]) for c in changes if c["type"] == "log"]
    assert logs == [("build amd64", f"build amd64: line {i}") for i in range(3)] + [
        ("publish", f"publish: line {i}") for i in range(3)
    ]
    assert changes[-1]["type"] == "run" and changes[-1]["run"]["conclusion"] == "success"
    with ci.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(CiJob).where(CiJob.run_id == run_id)) == 2
