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


class PortUnavailable(PlatformError):
    """The adapter running this code was not given the port it needs (a queue, a CI backend ...)."""

    http_status = 503


@dataclass(frozen=True)
class Ports:
    """The outside world an action may reach, given by the adapter that runs it."""

    enqueue: EnqueuePublication | None = None
    """The task queue: ``enqueue(delivery_id) -> task_id`` (see ``diskci.platform.tasks.TaskQueue``)."""

    ci_backend: object | None = None
    """The CI backend builds are dispatched to (embedded runner.v1 server, Gitea); not wired yet."""

    compute_provider: object | None = None
    """The compute provider CI workers are provisioned on (local, EC2); not wired yet."""

    def enqueue_publication(self, delivery_id: str) -> str:
        """Queue ``delivery_id`` for the publication processor; returns its task_id."""
        if self.enqueue is None:
            raise PortUnavailable(f"cannot queue delivery {delivery_id}: this adapter has no task queue")
        return self.enqueue(delivery_id)
