"""The server side of diskci's worker heartbeat: a runner's host stats, stored on its ``CiRunner``.

``POST /api/actions/diskci.v1.WorkerService/Heartbeat``, a Connect unary call beside runner.v1 and
authenticated the same way (``x-runner-uuid``/``x-runner-token``, checked before the body is read;
every call is also a ``last_seen``), with the body ``{"disk": {"path", "total", "free"}, "memory":
{"total", "available"}, "load": [1, 5, 15 min]}`` (bytes), at most ``MAX_HEARTBEAT_BYTES``. A body
that is not exactly that is an ``invalid_argument`` naming each wrong field, and nothing is stored.
What it stores (``CiRunner.stats``, ``stats_at``) is what ``system_get_instance_stats`` reads. The
answer is ``{}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from diskci.errors import InvalidRequest
from diskci.platform.db.models import CiRunner, utcnow
from diskci.platform.http.runner_protocol import PREFIX
from diskci.platform.http.runner_protocol import _call as connect_call

__all__ = ["BODY_LIMITS", "HEARTBEAT_PATH", "HostStats", "router"]

SERVICE = "diskci.v1.WorkerService"
HEARTBEAT_PATH = f"{PREFIX}/{SERVICE}/Heartbeat"
MAX_HEARTBEAT_BYTES = 16 * 1024
BODY_LIMITS = {HEARTBEAT_PATH: MAX_HEARTBEAT_BYTES}

router = APIRouter(prefix=PREFIX, include_in_schema=False)

Bytes = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]
Load = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiskStats(_Strict):
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    total: Bytes
    free: Bytes


class MemoryStats(_Strict):
    total: Bytes
    available: Bytes


class HostStats(_Strict):
    """A worker's host as its heartbeat gives it."""

    disk: DiskStats
    memory: MemoryStats
    load: Annotated[list[Load], Field(min_length=3, max_length=3)]


def _stats(body: dict[str, Any]) -> HostStats:
    try:
        stats = HostStats.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidRequest(f"Heartbeat: {problems}") from None
    if stats.disk.free > stats.disk.total:
        raise InvalidRequest("Heartbeat: disk.free is more than disk.total")
    if stats.memory.available > stats.memory.total:
        raise InvalidRequest("Heartbeat: memory.available is more than memory.total")
    return stats


def _heartbeat(_session: Session, body: dict[str, Any], runner: CiRunner | None) -> dict[str, Any]:
    assert runner is not None  # authenticated, locked and its last_seen renewed by the caller
    stats = _stats(body)
    runner.stats = stats.model_dump()
    runner.stats_at = utcnow()
    return {}


@router.post(f"/{SERVICE}/Heartbeat")
async def heartbeat(request: Request) -> JSONResponse:
    return await connect_call(request, _heartbeat)
