"""``diskci platform <action> --url URL --token TOKEN``: an action called over a platform's HTTP API.

``RemotePlatform.call(spec, data, confirm=...)`` posts the input to ``POST <url>/api/v1/<action>`` with
the bearer token (the token's role is the caller's), and gives back the answer validated into the
action's output model, so the CLI prints it exactly as it prints an in-process result. An error answer
(``{"error": "<ErrorClass>", "detail": "..."}``) is raised again as the diskci error of that name (its
family by HTTP status when this client does not know the name), with the server's message, so the
message and the exit code are those of local mode. A destructive call answers 428 with a
``confirmation_id``: with ``confirm`` the same call is repeated once with ``X-Diskci-Confirmation``;
without it the CLI's usual refusal is raised and nothing was done.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from diskci import __version__
from diskci.errors import (
    Conflict,
    DiskciError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PlatformError,
    Unauthorized,
    UsageError,
)

if TYPE_CHECKING:
    from diskci.platform.actions.catalog import ActionSpec

API_PREFIX = "/api/v1"  # platform.http.app.API_PREFIX (not imported: it would load FastAPI)
CONFIRMATION_HEADER = "X-Diskci-Confirmation"  # platform.http.app.CONFIRMATION_HEADER
CONNECT_TIMEOUT_SECONDS = 10.0
# Some actions work for a while before they answer (a publication diff, provisioning a CI worker).
READ_TIMEOUT_SECONDS = 300.0
_FAMILIES: dict[int, type[PlatformError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


class RemoteActionFailed(DiskciError):
    """A platform named with ``--url`` could not be reached, or answered something that is not the API."""


def unconfirmed(action: str, would_affect: Any) -> UsageError:
    """The CLI's refusal of a destructive call without ``--yes`` (in-process and remote alike)."""
    affected = f"; it would affect: {json.dumps(would_affect, sort_keys=True)}" if would_affect else ""
    return UsageError(f"{action} is destructive: add --yes to confirm (nothing was done){affected}")


def _subclass_named(base: type[DiskciError], name: str) -> type[DiskciError] | None:
    for cls in base.__subclasses__():
        if cls.__name__ == name:
            return cls
        found = _subclass_named(cls, name)
        if found is not None:
            return found
    return None


def error_class(name: str) -> type[DiskciError] | None:
    """The diskci error class called ``name`` (names are unique in the package), if there is one.

    The action modules are loaded by the CLI already; the HTTP layer's own errors (tokens, body limits,
    confirmations) are imported on the first name not found among them."""
    found = _subclass_named(DiskciError, name)
    if found is None:
        importlib.import_module("diskci.platform.http.app")  # every module whose errors the API answers
        found = _subclass_named(DiskciError, name)
    return found


def remote_error(status: int, name: str, detail: str) -> DiskciError:
    """The error an answer ``{"error": name, "detail": detail}`` with HTTP ``status`` stands for."""
    cls = error_class(name) or _FAMILIES.get(status, PlatformError)
    # The server's detail is already the error's diagnostics(): carry it as the message, as it is
    # (the class's own constructor would word it again, and some take other arguments).
    error = cls.__new__(cls)
    DiskciError.__init__(error, detail)
    return error


def _checked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--url {url!r} is not an http(s) URL of a platform",
            hint="Give the platform's base URL, e.g. --url http://127.0.0.1:8480",
        )
    if parts.query or parts.fragment:
        raise UsageError(f"--url {url!r}: give the platform's base URL, without a query or fragment")
    return url.rstrip("/")


def _token_from_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path}: cannot read the token: {exc}") from exc
    if not token:
        raise UsageError(f"--token-file {path} is empty")
    return token


@dataclass(frozen=True)
class RemotePlatform:
    """A platform's HTTP API, called with one bearer token."""

    url: str
    token: str

    @classmethod
    def from_options(
        cls, url: str | None, token: str | None, token_file: Path | None
    ) -> RemotePlatform | None:
        """The platform ``--url`` names with the token of ``--token`` or ``--token-file``; None
        without a URL (the action then runs in-process, where a token means nothing)."""
        if token and token_file is not None:
            raise UsageError("give --token (DISKCI_TOKEN) or --token-file (DISKCI_TOKEN_FILE), not both")
        if not url:
            if token or token_file is not None:
                raise UsageError(
                    "a token (--token, --token-file, DISKCI_TOKEN or DISKCI_TOKEN_FILE) is used only with"
                    " --url (DISKCI_URL): without a URL the action runs in-process on the local database"
                )
            return None
        base = _checked_url(url)
        secret = _token_from_file(token_file) if token_file is not None else (token or "").strip()
        if not secret:
            raise UsageError(
                f"--url {base} needs an API token: --token, --token-file, DISKCI_TOKEN or DISKCI_TOKEN_FILE",
                hint="An admin makes one: diskci platform token create NAME --role viewer|operator|admin",
            )
        return cls(url=base, token=secret)

    def call(self, spec: ActionSpec, data: dict[str, Any], *, confirm: bool) -> BaseModel:
        """Run ``spec`` with ``data`` on the platform; its output, validated into the output model."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"diskci/{__version__}",
        }
        timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        endpoint = f"{self.url}{API_PREFIX}/{spec.name}"
        body = json.dumps(data).encode()
        with httpx.Client(timeout=timeout, headers=headers, follow_redirects=False) as client:
            answer = self._post(client, endpoint, body, {})
            if answer.status_code == 428:
                asked = self._json(answer, spec.name)
                if not confirm:
                    raise unconfirmed(spec.name, asked.get("would_affect"))
                confirmation_id = asked.get("confirmation_id")
                if not isinstance(confirmation_id, str) or not confirmation_id:
                    raise RemoteActionFailed(
                        f"{self.url} asked to confirm {spec.name} without a confirmation_id: {asked}"
                    )
                answer = self._post(client, endpoint, body, {CONFIRMATION_HEADER: confirmation_id})
                if answer.status_code == 428:
                    raise RemoteActionFailed(f"{self.url} asked again to confirm {spec.name}, once confirmed")
        if answer.status_code != 200:
            raise self._error(answer, spec.name)
        try:
            return spec.output_model.model_validate_json(answer.content)
        except ValidationError as exc:
            raise RemoteActionFailed(
                f"{self.url} answered {spec.name} with what is not its output: {exc}",
                hint=f"Is the platform the same diskci version as this client ({__version__})?",
            ) from exc

    def _post(
        self, client: httpx.Client, endpoint: str, body: bytes, extra: dict[str, str]
    ) -> httpx.Response:
        try:
            return client.post(endpoint, content=body, headers=extra)
        except httpx.TimeoutException as exc:
            raise RemoteActionFailed(
                f"the platform at {self.url} did not answer in time ({type(exc).__name__}): {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise RemoteActionFailed(
                f"cannot reach the platform at {self.url}: {exc}",
                hint="Is `diskci platform serve` running there? Check --url (DISKCI_URL).",
            ) from exc

    def _json(self, answer: httpx.Response, action: str) -> dict[str, Any]:
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = answer.text[:300].strip()
            raise RemoteActionFailed(
                f"{self.url} answered {action} with HTTP {answer.status_code}, not the platform API's"
                f" JSON: {text!r}",
                hint="Check --url (DISKCI_URL): it names the platform's base URL, e.g. http://host:8480",
            )
        return body

    def _error(self, answer: httpx.Response, action: str) -> DiskciError:
        body = self._json(answer, action)
        name, detail = body.get("error"), body.get("detail")
        if not isinstance(name, str) or not isinstance(detail, str):
            return RemoteActionFailed(
                f"{self.url} answered {action} with HTTP {answer.status_code} and no diskci error: {body}"
            )
        return remote_error(answer.status_code, name, detail)
