"""The CI worker tasks with a fake compute provider: provisioning hands the provider the runner's
token; a termination whose destroy fails leaves the worker ``terminating`` with the reason and an
event, and the retry finishes it; a provisioning that fails for good leaves it ``failed``."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import Event, NodeInstance, Role, Task
from diskci.platform.db.session import Database
from diskci.platform.providers.base import MachineState, ProviderFailed, WorkerMachine
from diskci.platform.services import worker_lifecycle
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import TaskQueue, _run_ci_worker_task

WORKER = {
    "hostname": "ci-1",
    "provider_region_id": "local",
    "provider_instance_type_id": "local.small",
    "build_targets": ["amd64"],
}


@dataclass
class FakeProvider:
    made: dict[str, WorkerMachine] = field(default_factory=dict)
    fail_create: int = 0
    fail_destroy: int = 0

    def create(self, machine: WorkerMachine) -> str:
        if self.fail_create:
            self.fail_create -= 1
            raise ProviderFailed("no capacity")
        self.made[f"fake-{machine.instance_id}"] = machine
        return f"fake-{machine.instance_id}"

    def lookup(self, instance_id: int) -> str | None:
        return f"fake-{instance_id}" if f"fake-{instance_id}" in self.made else None

    def get(self, provider_id: str) -> MachineState:
        return MachineState.RUNNING if provider_id in self.made else MachineState.GONE

    def destroy(self, provider_id: str) -> None:
        if self.fail_destroy:
            self.fail_destroy -= 1
            raise ProviderFailed("the API timed out")
        self.made.pop(provider_id, None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    provider = FakeProvider()
    monkeypatch.setattr(worker_lifecycle, "provider", lambda name, settings: provider)
    monkeypatch.setattr(TaskQueue, "enqueue_ci_worker_task", lambda self, task_id: task_id)
    return provider


def _call(db: Database, settings: PlatformSettings, name: str, data: dict[str, Any]) -> Any:
    return invoke(name, data, database=db, settings=settings, actor="test", role=Role.ADMIN, confirmed=True)


def _instance(db: Database, instance_id: int) -> SimpleNamespace:
    with db.read_session() as s:
        node = s.get(NodeInstance, instance_id)
        assert node is not None
        return SimpleNamespace(
            status=node.status, status_reason=node.status_reason, terminated_at=node.terminated_at
        )


def test_a_failed_destroy_leaves_terminating_and_the_retry_finishes(
    platform_db: Database, platform_settings: PlatformSettings, fake: FakeProvider
) -> None:
    queue = TaskQueue(platform_settings, database=platform_db)
    answer = _call(platform_db, platform_settings, "system_provision_ci_worker", WORKER)
    _run_ci_worker_task(queue, answer.task_id, None)
    made = fake.made[f"fake-{answer.instance.id}"]
    assert made.registration_token == answer.runner_token and made.labels == ("amd64",)
    assert answer.runner_token not in repr(made)
    with platform_db.read_session() as s:  # the token is not kept in clear
        task = s.query(Task).filter(Task.task_id == answer.task_id).one()
        assert answer.runner_token not in str(task.payload) and task.status == "succeeded"
    assert _instance(platform_db, answer.instance.id).status == "running"

    fake.fail_destroy = 1
    terminating = _call(
        platform_db, platform_settings, "system_terminate_ci_worker", {"id": answer.instance.id}
    )
    with pytest.raises(ProviderFailed):
        _run_ci_worker_task(queue, terminating.task_id, SimpleNamespace(retries=2))  # type: ignore[arg-type]
    node = _instance(platform_db, answer.instance.id)
    assert node.status == "terminating" and "the API timed out" in (node.status_reason or "")
    with platform_db.read_session() as s:
        failed = s.query(Event).filter(Event.type == "ci_worker_termination_failed").one()
        assert failed.payload["attempt"] == 1 and failed.payload["final"] is False
    # terminating again reuses the open task; its retry finishes the job
    again = _call(platform_db, platform_settings, "system_terminate_ci_worker", {"id": answer.instance.id})
    assert again.task_id == terminating.task_id and again.status == "terminating"
    _run_ci_worker_task(queue, terminating.task_id, SimpleNamespace(retries=1))  # type: ignore[arg-type]
    node = _instance(platform_db, answer.instance.id)
    assert node.status == "terminated" and node.terminated_at is not None and node.status_reason is None
    assert fake.made == {}
    done = _call(platform_db, platform_settings, "system_terminate_ci_worker", {"id": answer.instance.id})
    assert (done.status, done.task_id) == ("terminated", terminating.task_id)
    # a message delivered twice does nothing the second time
    assert _run_ci_worker_task(queue, terminating.task_id, None) == {"skipped": terminating.task_id}


def test_a_provisioning_that_fails_for_good_leaves_the_worker_failed(
    platform_db: Database, platform_settings: PlatformSettings, fake: FakeProvider
) -> None:
    queue = TaskQueue(platform_settings, database=platform_db)
    fake.fail_create = 5
    answer = _call(platform_db, platform_settings, "system_provision_ci_worker", WORKER)
    result = _run_ci_worker_task(queue, answer.task_id, None)  # the last attempt
    assert result["error"] == "ProviderFailed"
    node = _instance(platform_db, answer.instance.id)
    assert node.status == "failed" and "no capacity" in (node.status_reason or "")
    listed = _call(platform_db, platform_settings, "system_list_ci_workers", {})
    assert [(w.status, w.status_reason) for w in listed.workers] == [("failed", node.status_reason)]


def test_recovery_requeues_an_abandoned_worker_task(
    platform_db: Database, platform_settings: PlatformSettings, fake: FakeProvider
) -> None:
    from datetime import timedelta

    from diskci.platform.db.models import utcnow
    from diskci.platform.tasks import recover_ci_worker_tasks

    answer = _call(platform_db, platform_settings, "system_provision_ci_worker", WORKER)
    queued: list[str] = []
    later = utcnow() + timedelta(seconds=platform_settings.task_lease_seconds + 1)
    assert (
        recover_ci_worker_tasks(platform_db, queued.append, lease_seconds=60, waiting={answer.task_id}) == []
    )
    found = recover_ci_worker_tasks(platform_db, queued.append, lease_seconds=60, waiting=set(), now=later)
    assert found == [answer.task_id] == queued
