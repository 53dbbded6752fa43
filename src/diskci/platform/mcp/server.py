"""The MCP server generated from the action catalog: one tool per action, plus ``request_confirmation``.

Each tool is named as its action, takes the action's input fields as flat arguments (its input schema
is the input model's JSON schema, as the HTTP API documents it), returns the output model as structured
content (its output schema), carries the action's help text as description and sets every annotation
(``readOnlyHint``, ``destructiveHint``, ``idempotentHint``, ``openWorldHint``). Arguments go to
``invoke()`` as the JSON they are, so they are validated there, strictly, like the HTTP API's bodies.
A diskci error comes back as a tool error: ``{"error": "<ErrorClass>", "detail": ..., "fields": [...]}``.

A caller sees only the tools its role allows (the listing is filtered per request), and a read-only
server has only the read-only tools. Who the caller is comes from ``caller_of``: a fixed API token
(stdio) or the bearer token of the HTTP request (``platform.mcp.transport``).

A destructive tool never acts on its first call. If the client declared elicitation, the server asks
the operator directly (decline or cancel changes nothing); otherwise the call returns the tool error
``ConfirmationRequired`` with what it would do and a one-time ``confirmation_id`` (see
``platform.mcp.confirmations``), which the assistant passes to ``request_confirmation`` with the same
action and arguments once the operator agreed.

The runbook's guidance is served too (``platform.mcp.guidance``): a prompt per operator intent (which
tools to chain, what to remind), and resources: ``diskci://platforms``, ``diskci://publications``,
``diskci://events/recent``, ``diskci://ci/runs``, ``diskci://ci/workers`` (read through the read-only
actions, as the caller) and the troubleshooting table ``diskci://guide/troubleshooting``.

A destructive call's first answer (and the elicitation's message) carries ``would_affect``: the
action's preview, the objects it would change (``catalog.preview_action``), as the HTTP API's 428
answer and the CLI's refusal do.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from mcp.server.context import ServerRequestContext
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.prompts.base import PromptArgument as McpPromptArgument
from mcp.server.mcpserver.resolve import Elicit, Resolve, build_resolver_plans, find_resolved_parameters
from mcp.server.mcpserver.resources import FunctionResource, Resource
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.request_state import RequestStateSecurity
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, ListToolsResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diskci import __version__
from diskci.errors import DiskciError, InvalidRequest, Unauthorized
from diskci.platform.actions.catalog import (
    ActionModel,
    ActionSpec,
    ConfirmationRequired,
    confirmation_needed,
    get_action,
    invoke,
    load_all,
    preview_action,
)
from diskci.platform.db.models import Role
from diskci.platform.db.session import Database
from diskci.platform.http.auth import Principal
from diskci.platform.mcp import confirmations, guidance
from diskci.platform.ports import Ports
from diskci.platform.settings import PlatformSettings

SERVER_NAME = "diskci"
REQUEST_CONFIRMATION = "request_confirmation"
INSTRUCTIONS = (
    "diskci's control plane: node platforms, CI runs and CI workers, webhooks, disk image "
    "publications, netboot, retention and API tokens, one tool per operator action; the prompts say "
    "which tools to chain for each operator intent. Destructive tools never act on the first call: the "
    "operator is asked directly, or the call answers ConfirmationRequired with a confirmation_id and "
    "would_affect; show the operator what would happen, and only once they agree call "
    "request_confirmation with that id and the same action and arguments (the id expires after 5 "
    "minutes and works once)."
)


# Who calls a tool: the same identity as every adapter's (an API token's name and role).
Caller = Principal


CallerOf = Callable[[ServerRequestContext[Any, Any] | None], Awaitable[Caller]]


class Confirm(BaseModel):
    """The operator's answer to an elicited confirmation."""

    confirm: bool = Field(description="Yes: do it now (it cannot be undone).")


class RequestConfirmationInput(ActionModel):
    confirmation_id: str = Field(max_length=64, description="The id a destructive tool's call answered with.")
    action: str = Field(max_length=128, description="The destructive tool (action) being confirmed.")
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="Exactly the arguments of the call that answered with the id."
    )


class RequestConfirmationOutput(ActionModel):
    action: str
    result: dict[str, Any] = Field(description="The action's output.")


class _Arguments(ArgModelBase):
    """The tool's arguments as they came (``invoke()`` validates them): handed on as ``arguments``."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def model_dump_one_level(self) -> dict[str, Any]:
        return {"arguments": dict(self.model_extra or {})}


# An elicitation's outcome, as a refusal's reason (accepting with "no" is declining).
_REFUSALS = {"decline": "declined", "cancel": "cancelled", "accept": "declined"}


class _NotAsked:
    """A resolver's answer when nothing was asked: the client cannot elicit, the call is invalid, or
    (``direct``) this call of an action destructive only in some states needs no confirmation now."""

    def __init__(self, error: DiskciError | None = None, *, direct: bool = False) -> None:
        self.error = error
        self.direct = direct


T = TypeVar("T")


# ---- results ---------------------------------------------------------------------------------------


def _fields(exc: BaseException) -> list[str]:
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return sorted({".".join(str(p) for p in err["loc"]) or "(arguments)" for err in cause.errors()})
    return []


def error_result(exc: DiskciError, **more: Any) -> CallToolResult:
    """A diskci error as a tool error: its class name, message, hint and the fields at fault."""
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": exc.message, "fields": _fields(exc)}
    if exc.hint:
        body["hint"] = exc.hint
    body.update(more)
    text = f"{body['error']}: {exc.diagnostics()}"
    if more:
        text += "\n" + json.dumps(more, indent=2, default=str)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=body, is_error=True
    )


def _ok(result: BaseModel) -> CallToolResult:
    data = result.model_dump(mode="json", by_alias=True)
    text = json.dumps(data, indent=2)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _annotations(spec: ActionSpec) -> ToolAnnotations:
    return ToolAnnotations(
        readOnlyHint=spec.read_only,
        destructiveHint=spec.may_destroy,
        # A read is idempotent; a change is not assumed to be (creating twice is a conflict).
        idempotentHint=spec.read_only,
        openWorldHint=False,
    )


def _description(spec: ActionSpec) -> str:
    text = f"{spec.description}\n\nRole: {spec.role.value} or higher."
    if spec.may_destroy:
        when = f" {spec.destructive_note}" if spec.destructive_note else ""
        text += (
            f"\n\nDestructive{when}: such a call does nothing at first; it asks the operator, or answers "
            f"ConfirmationRequired with a confirmation_id for {REQUEST_CONFIRMATION}."
        )
    return text


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True)


def _confirm_message(spec: ActionSpec, arguments: dict[str, Any], would_affect: dict[str, Any]) -> str:
    affected = f"It would affect: {json.dumps(would_affect, sort_keys=True)}\n" if would_affect else ""
    return (
        f"{spec.name} is destructive: {spec.summary}\n"
        f"Arguments: {json.dumps(arguments, sort_keys=True)}\n"
        f"{affected}"
        "It acts at once and cannot be undone. Go ahead?"
    )


# The request being handled (set by the server's middleware): how a resource read knows its caller.
_REQUEST: contextvars.ContextVar[ServerRequestContext[Any, Any] | None] = contextvars.ContextVar(
    "diskci_mcp_request", default=None
)


@dataclass(frozen=True)
class DataResource:
    """A resource read through a read-only action (with its default input), as the caller."""

    uri: str
    name: str
    title: str
    action: str


DATA_RESOURCES = (
    DataResource("diskci://platforms", "platforms", "Node platforms", "system_list_node_platforms"),
    DataResource(
        "diskci://publications",
        "publications",
        "Disk image publications (newest first)",
        "system_list_disk_image_publications",
    ),
    DataResource("diskci://events/recent", "recent-events", "Recent events", "system_list_recent_events"),
    DataResource("diskci://ci/runs", "ci-runs", "CI runs (newest first)", "system_list_disk_image_ci_runs"),
    DataResource(
        "diskci://ci/workers", "ci-workers", "CI workers and their status", "system_list_ci_workers"
    ),
)
TROUBLESHOOTING_URI = "diskci://guide/troubleshooting"


# ---- the server ------------------------------------------------------------------------------------


class DiskciMcp:
    """The tools, bound to a database, settings, ports and a way to tell who calls."""

    def __init__(
        self,
        *,
        database: Database,
        settings: PlatformSettings,
        ports: Ports,
        caller_of: CallerOf,
        read_only: bool = False,
    ) -> None:
        self.database = database
        self.settings = settings
        self.ports = ports
        self.caller_of = caller_of
        self.read_only = read_only
        self.specs = [s for s in load_all().values() if s.read_only or not read_only]

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        return await self.caller_of(ctx._request_context)  # None outside a request

    async def invoke(
        self, spec: ActionSpec, payload: Any, caller: Caller, *, confirmed: bool
    ) -> CallToolResult:
        try:
            result = await anyio.to_thread.run_sync(
                lambda: invoke(
                    spec.name,
                    payload,
                    database=self.database,
                    settings=self.settings,
                    actor=caller.actor,
                    role=caller.role,
                    confirmed=confirmed,
                    ports=self.ports,
                )
            )
        except DiskciError as exc:
            return error_result(exc)
        return _ok(result)

    def _check(self, spec: ActionSpec, caller: Caller, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments validated as ``spec``'s input (after the role, as ``invoke()`` does)."""
        return confirmations.bound_arguments(spec, arguments, caller.role)

    async def _ask(
        self, question: Callable[..., T], spec: ActionSpec, checked: dict[str, Any], caller: Caller
    ) -> T:
        """``question`` (``preview_action``, ``confirmation_needed``: they change nothing) as the caller."""
        return await anyio.to_thread.run_sync(
            lambda: question(
                spec.name,
                checked,
                database=self.database,
                settings=self.settings,
                actor=caller.actor,
                role=caller.role,
                ports=self.ports,
            )
        )

    async def _preview(self, spec: ActionSpec, checked: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """What the destructive call would affect (the action's preview; it changes nothing)."""
        return await self._ask(preview_action, spec, checked, caller)

    async def _needed(self, spec: ActionSpec, checked: dict[str, Any], caller: Caller) -> bool:
        """Whether this call must be confirmed (always for a destructive action; by state otherwise)."""
        return await self._ask(confirmation_needed, spec, checked, caller)

    def action_tool(self, spec: ActionSpec) -> Tool:
        if spec.may_destroy:
            return self._destructive_tool(spec)

        async def run(ctx: Context[Any, Any], arguments: dict[str, Any]) -> CallToolResult:
            try:
                caller = await self.caller(ctx)
            except DiskciError as exc:
                return error_result(exc)
            return await self.invoke(spec, arguments, caller, confirmed=False)

        run.__annotations__ = {"ctx": Context, "arguments": dict[str, Any], "return": CallToolResult}
        return _tool(
            spec.name, _description(spec), spec.input_model, spec.output_model, _annotations(spec), run
        )

    def _destructive_tool(self, spec: ActionSpec) -> Tool:
        async def ask(ctx: Context[Any, Any], arguments: dict[str, Any]) -> Elicit[Confirm] | _NotAsked:
            try:
                caller = await self.caller(ctx)
                checked = await anyio.to_thread.run_sync(self._check, spec, caller, arguments)
                if not await self._needed(spec, checked, caller):
                    return _NotAsked(direct=True)
                capabilities = ctx.client_capabilities if ctx._request_context is not None else None
                elicitation = capabilities.elicitation if capabilities is not None else None
                if elicitation is None or (elicitation.form is None and elicitation.url is not None):
                    return _NotAsked()
                would_affect = await self._preview(spec, checked, caller)
            except DiskciError as exc:
                return _NotAsked(exc)  # run() meets the same error and answers it
            return Elicit(_confirm_message(spec, checked, would_affect), Confirm)

        async def run(
            ctx: Context[Any, Any], answer: ElicitationResult[Confirm] | Any, arguments: dict[str, Any]
        ) -> CallToolResult:
            try:
                caller = await self.caller(ctx)
                checked = await anyio.to_thread.run_sync(self._check, spec, caller, arguments)
            except DiskciError as exc:
                return error_result(exc)
            outcome = answer.data if isinstance(answer, AcceptedElicitation) else answer
            if isinstance(outcome, _NotAsked) and outcome.direct:
                return await self.invoke(spec, checked, caller, confirmed=False)
            if isinstance(outcome, _NotAsked):
                return await self._pending(spec, checked, caller)
            accepted = isinstance(outcome, Confirm) and outcome.confirm
            reason = "accepted" if accepted else _REFUSALS.get(getattr(answer, "action", ""), "declined")
            await anyio.to_thread.run_sync(
                lambda: confirmations.record_answer(
                    self.database, spec.name, checked, actor=caller.actor, accepted=accepted, reason=reason
                )
            )
            if not accepted:
                return error_result(
                    confirmations.ConfirmationRefused(
                        reason, f"the operator {reason} {spec.name}: nothing was done"
                    )
                )
            return await self.invoke(spec, checked, caller, confirmed=True)

        ask.__annotations__ = {
            "ctx": Context,
            "arguments": dict[str, Any],
            "return": Elicit[Confirm] | _NotAsked,
        }
        run.__annotations__ = {
            "ctx": Context,
            "answer": Annotated[ElicitationResult[Confirm], Resolve(ask)],
            "arguments": dict[str, Any],
            "return": CallToolResult,
        }
        return _tool(
            spec.name, _description(spec), spec.input_model, spec.output_model, _annotations(spec), run
        )

    async def _pending(self, spec: ActionSpec, checked: dict[str, Any], caller: Caller) -> CallToolResult:
        try:
            would_affect = await self._preview(spec, checked, caller)
        except DiskciError as exc:
            return error_result(exc)  # refused at once: nothing to confirm
        issued = await anyio.to_thread.run_sync(
            lambda: confirmations.issue(
                self.database, spec.name, checked, actor=caller.actor, would_affect=would_affect
            )
        )
        required = ConfirmationRequired(spec.name)
        required.hint = f"Nothing was done. Confirm it with {REQUEST_CONFIRMATION} (once, within 5 minutes)."
        return error_result(
            required,
            confirmation_id=issued.confirmation_id,
            expires_at=issued.expires_at.isoformat(),
            action=spec.name,
            arguments=checked,
            would=f"{spec.summary} ({spec.name} with these arguments; it cannot be undone)",
            would_affect=would_affect,
            next=(
                f"Show this to the operator; once they agree, call {REQUEST_CONFIRMATION} with this "
                "confirmation_id, action and arguments."
            ),
        )

    def request_confirmation_tool(self) -> Tool:
        async def run(ctx: Context[Any, Any], arguments: dict[str, Any]) -> CallToolResult:
            try:
                caller = await self.caller(ctx)
                request = _strict(RequestConfirmationInput, arguments, REQUEST_CONFIRMATION)
                spec = get_action(request.action)
                if not spec.may_destroy:
                    raise InvalidRequest(f"{spec.name} is not destructive: call it directly")
                checked = await anyio.to_thread.run_sync(self._check, spec, caller, request.arguments)
                await anyio.to_thread.run_sync(
                    lambda: confirmations.redeem(
                        self.database, request.confirmation_id, spec.name, checked, actor=caller.actor
                    )
                )
            except DiskciError as exc:
                return error_result(exc)
            done = await self.invoke(spec, checked, caller, confirmed=True)
            if done.is_error:
                return done
            return _ok(RequestConfirmationOutput(action=spec.name, result=done.structured_content or {}))

        run.__annotations__ = {"ctx": Context, "arguments": dict[str, Any], "return": CallToolResult}
        annotations = ToolAnnotations(
            readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False
        )
        description = (
            "Carry out a destructive action the operator agreed to: pass the confirmation_id its call "
            "answered with, and the same action and arguments. The id works once, for the caller it was "
            "issued to, within 5 minutes; anything else is refused and nothing is changed."
        )
        return _tool(
            REQUEST_CONFIRMATION,
            description,
            RequestConfirmationInput,
            RequestConfirmationOutput,
            annotations,
            run,
        )

    def prompts(self) -> list[Prompt]:
        """One prompt per operator intent of the runbook."""
        out = []
        for intent in guidance.INTENTS:

            def render(_intent: guidance.Intent = intent, **arguments: str) -> str:
                text = guidance.render(_intent, arguments)
                if self.read_only:
                    text += "\n\nThis server is read-only: only the read-only tools are offered here."
                return text

            arguments = [
                McpPromptArgument(name=a.name, description=a.description, required=a.required)
                for a in intent.arguments
            ]
            out.append(
                Prompt(
                    name=intent.name,
                    title=intent.title,
                    description=intent.description,
                    arguments=arguments,
                    fn=render,
                )
            )
        return out

    def resources(self) -> list[Resource]:
        """The platforms, publications and recent events, and the troubleshooting table."""
        out: list[Resource] = []
        for item in DATA_RESOURCES:
            spec = get_action(item.action)

            async def read(_spec: ActionSpec = spec) -> str:
                request = _REQUEST.get()
                try:
                    caller = await self.caller_of(request)
                except DiskciError as exc:
                    raise _resource_error(exc) from exc
                result = await self.invoke(_spec, {}, caller, confirmed=False)
                if result.is_error:
                    body = result.structured_content or {}
                    raise MCPError(code=INVALID_PARAMS, message=str(body.get("detail")), data=body)
                return json.dumps(result.structured_content, indent=2)

            out.append(
                FunctionResource(
                    uri=item.uri,
                    name=item.name,
                    title=item.title,
                    description=f"{spec.summary} (the {spec.name} tool with its defaults).",
                    mime_type="application/json",
                    fn=read,
                )
            )

        def table() -> str:
            return json.dumps(guidance.troubleshooting_table(), indent=2)

        out.append(
            FunctionResource(
                uri=TROUBLESHOOTING_URI,
                name="troubleshooting",
                title="Troubleshooting: symptom -> the checks that diagnose it",
                description=(
                    "The runbook's troubleshooting table: each symptom, the tool calls that diagnose it "
                    "(events with reasons, instance stats, the publication's failure reason) and what "
                    "each reason code means."
                ),
                mime_type="application/json",
                fn=table,
            )
        )
        return out

    def visible(self, role: Role) -> set[str]:
        """The tools a caller with ``role`` sees."""
        names = {s.name for s in self.specs if role.allows(s.role)}
        if any(s.may_destroy for s in self.specs if s.name in names):
            names.add(REQUEST_CONFIRMATION)
        return names

    def build(self) -> MCPServer[Any]:
        tools = [self.action_tool(spec) for spec in self.specs]
        if any(s.may_destroy for s in self.specs):
            tools.append(self.request_confirmation_tool())
        server: MCPServer[Any] = MCPServer(
            SERVER_NAME,
            title="diskci platform",
            instructions=INSTRUCTIONS,
            version=__version__,
            tools=tools,
            request_state_security=RequestStateSecurity(
                keys=[self._state_key()], bind_principal=self._principal, audience=SERVER_NAME
            ),
            resources=self.resources(),
            middleware=[self._filter_listing],
        )
        for prompt in self.prompts():
            server.add_prompt(prompt)
        return server

    def _state_key(self) -> bytes:
        """The key that seals elicitation state, shared by every replica (derived from the secret key)."""
        return hmac.new(
            self.settings.resolve_secret_key(), b"diskci/mcp/request-state", hashlib.sha256
        ).digest()

    def _principal(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        request = ctx.request
        caller = getattr(request, "scope", {}).get(CALLER_SCOPE_KEY) if request is not None else None
        return caller.actor if isinstance(caller, Caller) else None

    async def _filter_listing(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        token = _REQUEST.set(ctx)
        try:
            result = await call_next(ctx)
        except ValueError as exc:
            if ctx.method != "prompts/get":
                raise
            # A missing required argument: the client's mistake, named (not an internal error).
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
        finally:
            _REQUEST.reset(token)
        if ctx.method != "tools/list" or result is None:
            return result
        try:
            caller = await self.caller_of(ctx)
        except Unauthorized:
            allowed: set[str] = set()
        else:
            allowed = self.visible(caller.role)
        if isinstance(result, ListToolsResult):
            return result.model_copy(update={"tools": [t for t in result.tools if t.name in allowed]})
        if isinstance(result, dict):
            return {**result, "tools": [t for t in result.get("tools", []) if t.get("name") in allowed]}
        return result


# The key under which the HTTP transport leaves the authenticated ``Caller`` in the ASGI scope.
CALLER_SCOPE_KEY = "diskci.mcp.caller"


def _resource_error(exc: DiskciError) -> MCPError:
    body = {"error": type(exc).__name__, "detail": exc.message}
    return MCPError(code=INVALID_PARAMS, message=f"{body['error']}: {exc.message}", data=body)


def _strict(model: type[BaseModel], arguments: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate_json(json.dumps(arguments), strict=True)
    except ValidationError as exc:
        from diskci.platform.actions.catalog import validation_detail

        raise InvalidRequest(f"invalid input for {what}: {validation_detail(exc)}") from exc


def _tool(
    name: str,
    description: str,
    input_model: type[BaseModel],
    output_model: type[BaseModel],
    annotations: ToolAnnotations,
    fn: Callable[..., Awaitable[CallToolResult]],
) -> Tool:
    """A tool whose input schema is ``input_model``'s and whose arguments reach ``fn`` as they came."""
    resolved = find_resolved_parameters(fn)
    metadata = FuncMetadata(arg_model=_Arguments, output_model=output_model)
    return Tool(
        fn=fn,
        name=name,
        title=None,
        description=description,
        parameters=_schema(input_model),
        fn_metadata=metadata,
        is_async=True,
        context_kwarg="ctx",
        resolved_params=dict(resolved),
        resolver_plans=build_resolver_plans(resolved, {"arguments"}),
        annotations=annotations,
    )


def build_server(
    *,
    database: Database,
    settings: PlatformSettings,
    ports: Ports,
    caller_of: CallerOf,
    read_only: bool = False,
) -> MCPServer[Any]:
    """The MCP server of every action (only the read-only ones with ``read_only``)."""
    return DiskciMcp(
        database=database, settings=settings, ports=ports, caller_of=caller_of, read_only=read_only
    ).build()
