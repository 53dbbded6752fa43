"""How Gitea's answers become diskci's: its 4xx ``{"message", "url"}`` bodies and outages as errors of the
diskci tree, its JSON as typed models, its pagination headers (``Link``, ``X-Total-Count``) as page
numbers. ``GiteaClient`` raises these; callers catch them by family (``GiteaUnavailable``,
``GiteaRefused``, ``GiteaUnsupported``).
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from diskci.errors import PlatformError
from diskci.platform.gitea.models import DispatchTicket, GiteaVersion

__all__ = [
    "GiteaBadAnswer",
    "GiteaInvalidRequest",
    "GiteaNotFound",
    "GiteaOutcomeUnknown",
    "GiteaRefused",
    "GiteaRunnerNotFound",
    "GiteaTokenRefused",
    "GiteaUnavailable",
    "GiteaUnsupported",
    "gitea_message",
    "next_page",
    "no_cancel",
    "parse_json",
    "refusal",
    "to_model",
    "total_count",
]

M = TypeVar("M", bound=BaseModel)


class GiteaUnavailable(PlatformError):
    """Gitea could not be reached, timed out, or kept answering 5xx after the retries."""

    http_status = 503


class GiteaOutcomeUnknown(GiteaUnavailable):
    """A call that must not run twice failed after it was sent: it may have taken effect.
    ``ticket`` is set for a dispatch, to look for its run before dispatching again."""

    ticket: DispatchTicket | None = None


class GiteaUnsupported(PlatformError):
    """This Gitea has no endpoint for ``feature`` (its version predates it, or it was not found)."""

    http_status = 501

    def __init__(self, feature: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.feature = feature


class GiteaBadAnswer(PlatformError):
    """Gitea answered something its API does not document (not JSON, missing fields)."""

    http_status = 502


class GiteaRefused(PlatformError):
    """Gitea answered 4xx; ``gitea_status`` and ``gitea_message`` are what it said."""

    http_status = 502

    def __init__(self, call: str, gitea_status: int, gitea_message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{call}: Gitea answered {gitea_status}: {gitea_message}", hint=hint)
        self.call = call
        self.gitea_status = gitea_status
        self.gitea_message = gitea_message


class GiteaTokenRefused(GiteaRefused):
    """401/403: diskci's Gitea token is missing, wrong, or lacks the scope the call needs."""


class GiteaNotFound(GiteaRefused):
    http_status = 404


class GiteaRunnerNotFound(GiteaNotFound):
    """Gitea does not know that runner (any more)."""


class GiteaInvalidRequest(GiteaRefused):
    """400/422: Gitea refused the request's content (e.g. a ref a dispatch cannot use)."""

    http_status = 400


def gitea_message(response: httpx.Response) -> str:
    """Gitea's ``{"message": ...}``, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
        return str(data["message"])
    return response.text.strip()[:200] or response.reason_phrase


def refusal(call: str, response: httpx.Response, not_found: type[GiteaNotFound]) -> GiteaRefused:
    status, message = response.status_code, gitea_message(response)
    if status in (401, 403):
        return GiteaTokenRefused(call, status, message,
                                 hint="Check diskci's Gitea token and its scopes (write:repository, "
                                      "write:organization or write:admin for runners).")  # fmt: skip
    if status == 404:
        return not_found(call, status, message)
    if status in (400, 422):
        return GiteaInvalidRequest(call, status, message)
    if status < 400:
        return GiteaRefused(call, status, f"unexpected answer {status}")
    return GiteaRefused(call, status, message)


def no_cancel(version: GiteaVersion) -> GiteaUnsupported:
    return GiteaUnsupported(
        "cancel", f"Gitea {version} has no API to cancel a workflow run",
        hint="Mark the run cancel-requested and deregister its runner (delete_runner).",
    )  # fmt: skip


def parse_json(response: httpx.Response, call: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise GiteaBadAnswer(f"{call}: the answer is not JSON") from exc


def to_model(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise GiteaBadAnswer(f"Gitea's {what} is not what its API documents: {exc}") from exc


def next_page(response: httpx.Response) -> int | None:
    link = response.links.get("next")
    if not link or not link.get("url"):
        return None
    pages = parse_qs(urlsplit(link["url"]).query).get("page")
    try:
        return int(pages[0]) if pages else None
    except ValueError:
        return None


def total_count(response: httpx.Response, data: Any) -> int | None:
    for value in (response.headers.get("X-Total-Count"), data.get("total_count")):
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return None
