"""The action catalog: every operator operation once, as (pydantic input, function, pydantic output).

An action is a plain function ``def f(ctx: ActionContext, data: Input) -> Output`` registered with
``@action(name, Input, Output, role)``. The HTTP API, the CLI and the MCP server are generated from
this catalog and run actions only through ``invoke()``, which checks the caller's role (first, so that
a caller without it learns nothing of the input), validates the input, refuses a destructive action
that was not confirmed (the same rule for every adapter) and runs the function in one unit of work
(commit once, or roll back). Input is validated strictly, as the JSON it is: no coercion (``true`` is
not the id 1, ``"3"`` is not 3), and every integer must fit an INTEGER column; an adapter that reads
text (the CLI) converts it to the fields' types first. The adapter hands its ``Ports``
(the task queue, later the CI backend and compute provider) to ``invoke()``; actions reach them through
``ActionContext.ports`` only.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from diskci.errors import Conflict, Forbidden, InvalidRequest, PlatformError
from diskci.platform.db.models import Role, utcnow
from diskci.platform.db.session import MAX_INTEGER, Database
from diskci.platform.ports import Ports
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

# The modules whose import registers the actions (kept in the order of ``diskci platform --help``).
ACTION_MODULES = (
    "diskci.platform.actions.platforms",
    "diskci.platform.actions.instances",
    "diskci.platform.actions.ci_workers",
    "diskci.platform.actions.webhooks",
    "diskci.platform.actions.publications",
    "diskci.platform.actions.publication_diff",
    "diskci.platform.actions.publication_documents",
    "diskci.platform.actions.retention",
    "diskci.platform.actions.events",
    "diskci.platform.actions.ci_runs",
    "diskci.platform.actions.ci_settings",
    "diskci.platform.actions.tokens",
)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A time in an action's input: a naive time is taken as UTC.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]

Item = TypeVar("Item")


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# A list filter that also takes one value: {"status": "published"} is {"status": ["published"]}.
OneOrMany = Annotated[list[Item], BeforeValidator(_one_or_many)]


class ActionModel(BaseModel):
    """Base of every action input and output: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Empty(ActionModel):
    """The input of an action that takes none."""


@dataclass
class ActionContext:
    """What an action may use: the open session, the settings, who is calling, the clock, and the
    adapter's ports (``ctx.ports.enqueue_publication(...)``; ``ctx.ports.enqueue_worker_task(...)``)."""

    session: Session
    settings: PlatformSettings
    actor: str
    role: Role
    database: Database | None = None
    now: datetime = field(default_factory=utcnow)
    ports: Ports = field(default_factory=Ports)

    @cached_property
    def box(self) -> SecretBox:
        return SecretBox(key=self.settings.resolve_secret_key())


In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
ActionFunc = Callable[[ActionContext, Any], BaseModel]
# What a destructive action would do with an input: the objects it affects, as JSON data (it changes
# nothing; it raises the action's own errors, e.g. NotFound, when the action would refuse).
PreviewFunc = Callable[[ActionContext, Any], dict[str, Any]]


@dataclass(frozen=True)
class ActionSpec:
    name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    role: Role
    destructive: bool
    func: ActionFunc
    summary: str
    description: str
    read_only: bool
    preview: PreviewFunc | None = None
    # For an action destructive only in some states: says whether this call is (read-only check).
    destructive_when: Callable[[ActionContext, Any], bool] | None = None
    destructive_note: str = ""

    @property
    def may_destroy(self) -> bool:
        """Whether a call can need a confirmation: always destructive, or in some states."""
        return self.destructive or self.destructive_when is not None


_CATALOG: dict[str, ActionSpec] = {}


class DuplicateAction(PlatformError):
    """Two actions were registered under one name (a programming error, found at import)."""


def action(
    name: str,
    input_model: type[In],
    output_model: type[Out],
    role: Role,
    *,
    destructive: bool = False,
    read_only: bool = False,
    preview: Callable[[ActionContext, In], dict[str, Any]] | None = None,
    destructive_when: Callable[[ActionContext, In], bool] | None = None,
    destructive_note: str = "",
) -> Callable[[Callable[[ActionContext, In], Out]], Callable[[ActionContext, In], Out]]:
    """Register ``func`` as the action ``name``; its docstring is the help text (first line: summary).

    ``preview`` (for a destructive action) names the objects a call would affect, which every adapter
    shows before asking for the confirmation (``preview_action``). ``destructive_when`` makes an action
    destructive only in some states (``destructive_note`` says which): a call needs a confirmation when
    it answers true, checked again inside the action's own transaction."""
    if destructive and destructive_when is not None:
        raise ValueError(f"{name}: destructive always, or destructive_when; not both")

    def decorate(func: Callable[[ActionContext, In], Out]) -> Callable[[ActionContext, In], Out]:
        if name in _CATALOG and _CATALOG[name].func is not func:
            raise DuplicateAction(f"action {name!r} is registered twice")
        doc = inspect.cleandoc(func.__doc__ or name)
        summary = doc.partition("\n")[0]
        _CATALOG[name] = ActionSpec(
            name=name,
            input_model=input_model,
            output_model=output_model,
            role=role,
            destructive=destructive,
            func=func,
            summary=summary.strip(),
            description=doc,
            read_only=read_only,
            preview=preview,
            destructive_when=destructive_when,
            destructive_note=destructive_note,
        )
        return func

    return decorate


def load_all() -> Mapping[str, ActionSpec]:
    """Every registered action, by name (imports the action modules on first use)."""
    for module in ACTION_MODULES:
        importlib.import_module(module)
    order = {module: i for i, module in enumerate(ACTION_MODULES)}
    specs = sorted(_CATALOG.values(), key=lambda s: order.get(s.func.__module__, len(order)))
    return {spec.name: spec for spec in specs}


def get_action(name: str) -> ActionSpec:
    actions = load_all()
    if name not in actions:
        raise UnknownAction(f"no action named {name!r}")
    return actions[name]


class UnknownAction(InvalidRequest):
    http_status = 404


class ConfirmationRequired(InvalidRequest):
    """A destructive action was invoked without confirmation; ``action`` names it."""

    http_status = 428  # Precondition Required

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(
            f"{action} is destructive and was not confirmed",
            hint="Confirm it: --yes on the command line, confirmed=True to invoke().",
        )


def check_confirmed(spec: ActionSpec, confirmed: bool) -> None:
    if spec.destructive and not confirmed:
        raise ConfirmationRequired(spec.name)


class ConcurrentChange(Conflict):
    """A uniqueness rule was hit by a change that raced this one (the other change won)."""


class DatabaseUnavailable(PlatformError):
    http_status = 503


def validation_detail(exc: ValidationError) -> str:
    """A pydantic validation error as one line per problem: ``field.path: what was wrong``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        message = err["msg"].removeprefix("Value error, ")  # a field rule's own text says it all
        lines.append(f"{loc}: {message}")
    return "; ".join(lines)


def _has_nul(value: Any) -> bool:
    """Whether a string anywhere in ``value`` holds a NUL (no database text column can store one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, BaseModel):
        return any(_has_nul(getattr(value, name)) for name in type(value).model_fields)
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_nul(item) for item in value)
    return False


def _out_of_range(value: Any, path: str) -> str | None:
    """The path of the first integer in ``value`` that no INTEGER column holds, if any."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return path if not -MAX_INTEGER - 1 <= value <= MAX_INTEGER else None
    if isinstance(value, BaseModel):
        items: Any = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _out_of_range(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def parse_input(spec: ActionSpec, data: BaseModel | Mapping[str, Any] | None) -> BaseModel:
    """``data`` validated strictly, in JSON mode, as ``spec``'s input (a model instance as it is)."""
    if isinstance(data, spec.input_model):
        return data
    raw = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data or {})
    try:
        payload = spec.input_model.model_validate_json(to_json(raw), strict=True)
    except PydanticSerializationError as exc:
        raise InvalidRequest(f"invalid input for {spec.name}: not JSON data: {exc}") from exc
    except ValidationError as exc:
        raise InvalidRequest(f"invalid input for {spec.name}: {validation_detail(exc)}") from exc
    if _has_nul(payload):
        raise InvalidRequest(f"invalid input for {spec.name}: a text value holds a NUL character (\\u0000)")
    field = _out_of_range(payload, "")
    if field is not None:
        raise InvalidRequest(
            f"invalid input for {spec.name}: {field}: out of range (integers are at most {MAX_INTEGER})"
        )
    return payload


def check_role(spec: ActionSpec, role: Role) -> None:
    if not role.allows(spec.role):
        raise Forbidden(f"{spec.name} needs the {spec.role.value} role; this token has {role.value}")


@contextmanager
def _scope(database: Database, spec: ActionSpec) -> Iterator[Session]:
    ctx = database.read_session() if spec.read_only else database.session()
    with ctx as session:
        yield session


@contextmanager
def _read_only(
    spec: ActionSpec,
    database: Database,
    settings: PlatformSettings,
    actor: str,
    role: Role,
    ports: Ports | None,
) -> Iterator[ActionContext]:
    """An action context on a read-only session (a preview, a confirmation check: they change nothing)."""
    try:
        with database.read_session() as session:
            yield ActionContext(
                session=session,
                settings=settings,
                actor=actor,
                role=role,
                database=database,
                ports=ports or Ports(),
            )
    except OperationalError as exc:
        raise DatabaseUnavailable(f"{spec.name}: the database is unavailable: {exc.orig}") from exc


def preview_action(
    name: str,
    data: BaseModel | Mapping[str, Any] | None,
    *,
    database: Database,
    settings: PlatformSettings,
    actor: str,
    role: Role,
    ports: Ports | None = None,
) -> dict[str, Any]:
    """What the action ``name`` would do with ``data``, changing nothing: its preview's answer.

    Authorized and validated as ``invoke()`` does, run in a read-only session; ``{}`` for an action
    without a preview. The preview raises what the action would (``NotFound``, ``Conflict``), so an
    adapter refuses at once what could never be confirmed."""
    spec = get_action(name)
    check_role(spec, role)
    payload = parse_input(spec, data)
    if spec.preview is None:
        return {}
    with _read_only(spec, database, settings, actor, role, ports) as ctx:
        return spec.preview(ctx, payload)


def confirmation_needed(
    name: str,
    data: BaseModel | Mapping[str, Any] | None,
    *,
    database: Database,
    settings: PlatformSettings,
    actor: str,
    role: Role,
    ports: Ports | None = None,
) -> bool:
    """Whether this call of ``name`` must be confirmed: a destructive action always; one destructive
    only in some states when its ``destructive_when`` says so now (read-only; ``invoke()`` checks again)."""
    spec = get_action(name)
    if spec.destructive or spec.destructive_when is None:
        return spec.destructive
    check_role(spec, role)
    payload = parse_input(spec, data)
    with _read_only(spec, database, settings, actor, role, ports) as ctx:
        return spec.destructive_when(ctx, payload)


def invoke(
    name: str,
    data: BaseModel | Mapping[str, Any] | None,
    *,
    database: Database,
    settings: PlatformSettings,
    actor: str,
    role: Role,
    confirmed: bool = False,
    ports: Ports | None = None,
) -> BaseModel:
    """Run one action as ``actor`` with ``role``: authorize, validate, confirm, run, commit once.

    A destructive action needs ``confirmed=True`` (the adapter's confirmation: ``--yes`` on the CLI),
    else ``ConfirmationRequired``; so does one destructive only in some states, when it is in one.
    ``ports`` are what the action may reach outside the database.
    """
    spec = get_action(name)
    check_role(spec, role)
    payload = parse_input(spec, data)
    check_confirmed(spec, confirmed)
    try:
        with _scope(database, spec) as session:
            ctx = ActionContext(
                session=session,
                settings=settings,
                actor=actor,
                role=role,
                database=database,
                ports=ports or Ports(),
            )
            if spec.destructive_when is not None and not confirmed and spec.destructive_when(ctx, payload):
                raise ConfirmationRequired(spec.name)  # checked in the transaction that would change it
            result = spec.func(ctx, payload)
            if not isinstance(result, spec.output_model):
                raise TypeError(f"{name} returned {type(result).__name__}, not {spec.output_model.__name__}")
            return result
    except IntegrityError as exc:
        raise ConcurrentChange(f"{name}: a concurrent change conflicts with this one: {exc.orig}") from exc
    except OperationalError as exc:
        raise DatabaseUnavailable(f"{name}: the database is unavailable: {exc.orig}") from exc
    except (DataError, OverflowError) as exc:  # a value the database or the clock cannot hold
        detail = exc.orig if isinstance(exc, DataError) else exc
        raise InvalidRequest(f"{name}: a value of the input is out of range: {detail}") from exc
