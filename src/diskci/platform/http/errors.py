"""The one mapping from an error to an HTTP answer: ``{"error": "<ErrorClass>", "detail": "..."}``.

A diskci error answers with its own ``http_status``; Starlette's and FastAPI's own HTTP errors (an
unknown route, a wrong method) get the same shape, named after their status (``NotFound``, ...).
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from diskci.errors import DiskciError, Unauthorized


def error_response(exc: DiskciError) -> JSONResponse:
    """The answer to ``exc``: its HTTP status and the diskci error body."""
    status = getattr(exc, "http_status", 500)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(
        status_code=status,
        content={"error": type(exc).__name__, "detail": exc.diagnostics()},
        headers=headers,
    )


def http_error_response(exc: HTTPException) -> JSONResponse:
    """A Starlette ``HTTPException`` (404 for an unknown route, 405, ...) in the diskci error shape."""
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "Error"
    name = "".join(word.capitalize() for word in phrase.replace("-", " ").split())
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": name, "detail": str(exc.detail)},
        headers=exc.headers,
    )
