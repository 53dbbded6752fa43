"""Recent events and task status; ``record_event`` is how every room writes an event."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.errors import NotFound
from diskci.platform.actions.catalog import ActionContext, ActionModel, OneOrMany, UtcDatetime, action
from diskci.platform.db.models import Event, NodePlatform, Role, Task, utcnow
from diskci.platform.event_types import EVENT_TYPES


class TaskNotFound(NotFound):
    pass


def record_event(
    session: Session,
    type: str,
    *,
    platform: NodePlatform | None = None,
    platform_id: int | None = None,
    subject: str | None = None,
    reason: str | None = None,
    payload: dict[str, Any] | None = None,
) -> Event:
    """Add an event to the session (committed with the rest of the unit of work)."""
    event = Event(
        type=type,
        platform_id=platform.id if platform is not None else platform_id,
        subject=subject,
        reason=reason,
        payload=payload or {},
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    return event


def _known_event_type(name: str) -> str:
    if name not in EVENT_TYPES:
        raise ValueError(f"unknown event type {name!r} (known: {', '.join(sorted(EVENT_TYPES))})")
    return name


EventTypeName = Annotated[str, AfterValidator(_known_event_type)]


class EventOut(ActionModel):
    id: int
    type: str
    platform: str | None
    subject: str | None
    reason: str | None
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls(
            id=event.id,
            type=event.type,
            platform=event.platform.name if event.platform is not None else None,
            subject=event.subject,
            reason=event.reason,
            payload=event.payload,
            created_at=event.created_at,
        )


class ListEventsInput(ActionModel):
    type: OneOrMany[EventTypeName] | None = Field(
        default=None, description="Only these event types (the types the platform records)."
    )
    platform: str | None = Field(default=None, description="Only events of this node platform.")
    reason: OneOrMany[str] | None = Field(default=None, description="Only events with these reasons.")
    since: UtcDatetime | None = Field(default=None, description="Only events at or after this time.")
    until: UtcDatetime | None = Field(default=None, description="Only events before this time.")
    limit: int = Field(default=100, ge=1, le=1000)


class ListEventsOutput(ActionModel):
    events: list[EventOut]


@action("system_list_recent_events", ListEventsInput, ListEventsOutput, Role.VIEWER, read_only=True)
def system_list_recent_events(ctx: ActionContext, data: ListEventsInput) -> ListEventsOutput:
    """List recent events, newest first, filtered by type, reason, platform and time.

    Example: {"type": ["disk_image_publication_failed"], "platform": "debian-12-amd64", "limit": 20}
    """
    query = select(Event).order_by(Event.created_at.desc(), Event.id.desc()).limit(data.limit)
    if data.type:
        query = query.where(Event.type.in_(data.type))
    if data.reason:
        query = query.where(Event.reason.in_(data.reason))
    if data.platform:
        query = query.join(NodePlatform, Event.platform_id == NodePlatform.id).where(
            NodePlatform.name == data.platform
        )
    if data.since:
        query = query.where(Event.created_at >= data.since)
    if data.until:
        query = query.where(Event.created_at < data.until)
    return ListEventsOutput(events=[EventOut.of(e) for e in ctx.session.scalars(query).unique()])


class GetTaskInput(ActionModel):
    task_id: str


class TaskOut(ActionModel):
    task_id: str
    kind: str
    status: str
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@action("system_get_task", GetTaskInput, TaskOut, Role.VIEWER, read_only=True)
def system_get_task(ctx: ActionContext, data: GetTaskInput) -> TaskOut:
    """Show a queued task's status and result by its task_id.

    Example: {"task_id": "0b7f9c1e-..."}
    """
    task = ctx.session.scalar(select(Task).where(Task.task_id == data.task_id))
    if task is None:
        raise TaskNotFound(f"no task with task_id {data.task_id!r}")
    return TaskOut(
        task_id=task.task_id,
        kind=task.kind,
        status=task.status,
        payload=task.payload,
        result=task.result,
        error=task.error,
        attempts=task.attempts,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
    )
