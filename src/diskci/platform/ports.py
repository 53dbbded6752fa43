"""The ports of the platform: what actions and routes reach outside the database through.

An adapter (the HTTP app, the CLI, later MCP) builds one ``Ports`` from what it was started with and
hands it to ``invoke()``, which puts it on the ``ActionContext``; the webhook receiver uses the same
``Ports``. Nothing reaches into ``app.state`` or module globals for these. Slow external calls (registries,
CI backends, cloud APIs) run in queued tasks, never inside an action's database transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from diskci.errors import PlatformError


class EnqueuePublication(Protocol):
    """Queue the processing of a webhook delivery; returns the task_id operators follow it by."""

    def __call__(self, delivery_id: str, /) -> str: ...


class EnqueueTask(Protocol):
    """Queue the work a stored ``Task`` row describes (its task_id is the message's id)."""

    def __call__(self, task_id: str, /) -> str: ...


class PortUnavailable(PlatformError):
    """The adapter running this code was not given the port it needs (a queue, a CI backend ...)."""

    http_status = 503


@dataclass(frozen=True)
class Ports:
    """The outside world an action may reach, given by the adapter that runs it."""

    enqueue: EnqueuePublication | None = None
    """The task queue: ``enqueue(delivery_id) -> task_id`` (see ``diskci.platform.tasks.TaskQueue``)."""

    enqueue_worker: EnqueueTask | None = None
    """The task queue for a stored Task row (CI worker provisioning and termination):
    ``enqueue_worker(task_id) -> task_id``."""

    def enqueue_publication(self, delivery_id: str) -> str:
        """Queue ``delivery_id`` for the publication processor; returns its task_id."""
        if self.enqueue is None:
            raise PortUnavailable(f"cannot queue delivery {delivery_id}: this adapter has no task queue")
        return self.enqueue(delivery_id)

    def enqueue_worker_task(self, task_id: str) -> str:
        """Queue the CI worker Task row ``task_id``; returns it."""
        if self.enqueue_worker is None:
            raise PortUnavailable(f"cannot queue task {task_id}: this adapter has no task queue")
        return self.enqueue_worker(task_id)
