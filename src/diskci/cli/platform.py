"""``diskci platform``: run the control plane (serve, consume, migrate), manage API tokens, and call any
action (``diskci platform <action> --data '{...}'``): in-process against the local database, or with
``--url``/``--token`` (``DISKCI_URL``/``DISKCI_TOKEN``) over a platform's HTTP API with the token's role
(``cli.remote_actions``). Both print the result alike (``cli.result_tables``).

Only ``serve``, ``consume`` and ``migrate`` create a database; the other commands refuse one that does
not exist (naming it, and how to create it) instead of answering from a new, empty one.

Command-line overrides go into the one ``PlatformSettings`` each command builds and passes on (to the
app, the task queue, the database); nothing is written to ``os.environ``."""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from diskci.cli.action_input import parse_action_input
from diskci.cli.output import print_json, stdout
from diskci.cli.remote_actions import RemotePlatform, unconfirmed
from diskci.cli.result_tables import print_result
from diskci.console import interactive, stderr
from diskci.errors import UsageError
from diskci.platform.actions.catalog import (
    ActionSpec,
    ConfirmationRequired,
    confirmation_needed,
    get_action,
    invoke,
    load_all,
    preview_action,
)
from diskci.platform.db.models import Role

if TYPE_CHECKING:
    from diskci.platform.db.session import Database
    from diskci.platform.settings import PlatformSettings

platform_app = typer.Typer(
    help="The control plane: serve the API and netboot, consume the task queue, call every operator action.",
    no_args_is_help=True,
)
token_app = typer.Typer(help="API bearer tokens (admin, operator, viewer).", no_args_is_help=True)
platform_app.add_typer(token_app, name="token")

log = logging.getLogger("diskci.cli")

StateDirOption = typer.Option(None, "--state-dir", help="State directory (default: $DISKCI_STATE_DIR).")
DatabaseOption = typer.Option(None, "--database-url", help="Database URL (default: $DISKCI_DATABASE_URL).")
UrlOption = typer.Option(
    None,
    "--url",
    envvar="DISKCI_URL",
    help="A platform's base URL: run over its HTTP API with the token's role (default: in-process).",
)
TokenOption = typer.Option(None, "--token", envvar="DISKCI_TOKEN", help="The API token for --url.")
TokenFileOption = typer.Option(
    None, "--token-file", envvar="DISKCI_TOKEN_FILE", help="A file holding the API token for --url."
)


def _settings(state_dir: Path | None, database_url: str | None, **more: Any) -> PlatformSettings:
    """The ``DISKCI_*`` environment's settings, with the command line's overrides (those given)."""
    from diskci.platform.settings import PlatformSettings

    overrides = {"state_dir": state_dir, "database_url": database_url, **more}
    return PlatformSettings(**{key: value for key, value in overrides.items() if value is not None})


def _database(settings: PlatformSettings) -> Database:
    """The settings' database, created when missing and migrated (``serve``, ``consume``, ``migrate``)."""
    from diskci.platform.db.session import configure

    database = configure(settings.database_url)
    database.upgrade()
    return database


def _existing_database(settings: PlatformSettings) -> Database:
    """The settings' database, migrated; refused when it does not exist (creating one is ``migrate``'s
    job: a new, empty database would answer every question with nothing)."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from diskci.platform.actions.catalog import DatabaseUnavailable
    from diskci.platform.db.session import configure

    url = make_url(settings.database_url)
    shown = _redacted(settings.database_url)
    in_state = settings.database_url == f"sqlite:///{settings.state_dir / 'platform.db'}"
    flag = f"--state-dir {settings.state_dir}" if in_state else f"--database-url '{shown}'"
    hint = (
        f"Create it with: diskci platform migrate {flag}; or call a running platform instead:"
        " --url URL --token TOKEN (DISKCI_URL, DISKCI_TOKEN)"
    )
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database).expanduser()
        if not path.is_file():
            missing = settings.state_dir if in_state and not settings.state_dir.exists() else None
            why = f"the state directory {missing} does not exist" if missing else "the file does not exist"
            raise UsageError(f"no platform database at {path}: {why}", hint=hint)
    database = configure(settings.database_url)
    try:
        migrated = inspect(database.engine).has_table("alembic_version")
    except OperationalError as exc:
        raise DatabaseUnavailable(f"the database {shown} is unavailable: {exc.orig}") from exc
    if not migrated:
        raise UsageError(f"the database {shown} holds no diskci platform schema", hint=hint)
    database.upgrade()
    _say_where(f"database {shown}")
    return database


def _say_where(what: str) -> None:
    """Which platform a command works on: one line on stderr on a terminal, a debug line with -v."""
    if interactive():
        stderr.print(f"diskci platform: {what}", style="dim", markup=False, highlight=False)
    else:
        log.debug("diskci platform: %s", what)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@platform_app.command("serve")
def serve(
    host: str = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Port (default 8480)."),
    public_base_url: str = typer.Option(
        None, "--public-base-url", help="URL nodes and CI reach this server at (default http://HOST:PORT)."
    ),
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
    consumer: bool = typer.Option(
        None, "--consumer/--no-consumer", help="Run queue consumer threads in-process (default: on SQLite)."
    ),
    mcp_read_only: bool = typer.Option(
        None,
        "--mcp-read-only",
        help="MCP clients at /mcp see only the read-only tools (default: $DISKCI_MCP_READ_ONLY, off).",
    ),
) -> None:
    """Serve the API, the webhook receiver and netboot with uvicorn; on a SQLite queue also consume it.

    MCP clients (the System Concierge) connect to /mcp with a bearer token.

    Example: [bold]diskci platform serve --port 8480 --mcp-read-only[/]
    """
    import uvicorn

    from diskci.platform.db.session import configure
    from diskci.platform.http.app import create_app
    from diskci.platform.tasks import TaskQueue

    settings = _settings(
        state_dir,
        database_url,
        bind_host=host,
        bind_port=port or None,
        public_base_url=public_base_url,
        mcp_read_only=mcp_read_only or None,
    )
    settings.resolve_secret_key()  # fail before anything is opened when the key is missing
    database = configure(settings.database_url)
    queue = TaskQueue(settings, database=database)
    app = create_app(settings, database=database, enqueue=queue.enqueue_publication)
    queue.recover(at_start=True)  # deliveries a crash abandoned, and its temporary files
    run_consumer = consumer if consumer is not None else settings.queue_url.startswith("sqlite")
    queue_consumer = queue.consumer(workers=settings.queue_workers) if run_consumer else None
    if queue_consumer is not None:
        queue_consumer.start()
    stdout.print(
        f"diskci platform on http://{settings.bind_host}:{settings.bind_port} (state {settings.state_dir})"
    )
    try:
        uvicorn.run(app, host=settings.bind_host, port=settings.bind_port, log_level="info")
    finally:
        if queue_consumer is not None:
            queue_consumer.stop(graceful=True)


@platform_app.command("consume")
def consume(
    workers: int = typer.Option(
        2, "--workers", "-w", min=1, help="Tasks this queue consumer runs at once (its threads or processes)."
    ),
    processes: bool = typer.Option(False, "--processes", help="Run tasks in processes, not threads."),
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
    queue_url: str = typer.Option(None, "--queue-url", help="Queue URL (default: $DISKCI_QUEUE_URL)."),
) -> None:
    """Run a queue consumer: publication processing and retention, until interrupted; use with Redis.

    Run as many as needed, anywhere the queue and the database are reachable.

    Example: [bold]DISKCI_QUEUE_URL=redis://127.0.0.1:6379/0 diskci platform consume -w 4[/]
    """
    from diskci.platform.tasks import TaskQueue

    settings = _settings(state_dir, database_url, queue_url=queue_url)
    queue = TaskQueue(settings, database=_database(settings))
    queue.recover(at_start=True)  # deliveries a crash abandoned, and its temporary files
    queue.consumer(workers=workers, worker_type="process" if processes else "thread").run()


@platform_app.command("migrate")
def migrate(
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Upgrade the database schema to the newest revision (``serve`` and ``consume`` do this too).

    Example: [bold]diskci platform migrate --database-url postgresql://diskci@db/diskci[/]
    """
    settings = _settings(state_dir, database_url)
    database = _database(settings)
    result = {"database": database.backend, "url": _redacted(settings.database_url), "schema": "head"}
    if json_out:
        print_json(result)
    else:
        stdout.print(f"{result['url']}: schema at head")


@platform_app.command("mcp")
def mcp(
    token_name: str = typer.Option(
        ..., "--token-name", help="The API token whose identity and role the MCP client acts with."
    ),
    read_only: bool = typer.Option(False, "--read-only", help="Offer only the read-only tools."),
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
) -> None:
    """Serve the actions as MCP tools on stdin/stdout, for a local assistant (the System Concierge).

    The client acts as the named API token: it sees and may call only what the token's role allows.
    Over HTTP the same tools are at /mcp on [bold]diskci platform serve[/] (bearer tokens).

    Example: [bold]diskci platform mcp --token-name ops-alice --read-only[/]
    """
    from diskci.platform.mcp.transport import run_stdio
    from diskci.platform.ports import Ports
    from diskci.platform.tasks import TaskQueue

    settings = _settings(state_dir, database_url)
    database = _existing_database(settings)
    queue = TaskQueue(settings, database=database)
    ports = Ports(enqueue=queue.enqueue_publication, enqueue_worker=queue.enqueue_ci_worker_task)
    run_stdio(database=database, settings=settings, ports=ports, token_name=token_name, read_only=read_only)


def _has_tokens(database: Any) -> bool:
    from sqlalchemy import select

    from diskci.platform.db.models import ApiToken

    with database.read_session() as session:
        return session.scalar(select(ApiToken.id).limit(1)) is not None


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class Where:
    """Where an action runs: the local database (``--state-dir``, ``--database-url``) or, with
    ``--url``, a platform's HTTP API with the token of ``--token`` or ``--token-file``."""

    state_dir: Path | None = None
    database_url: str | None = None
    url: str | None = None
    token: str | None = None
    token_file: Path | None = None

    def remote(self) -> RemotePlatform | None:
        platform = RemotePlatform.from_options(self.url, self.token, self.token_file)
        if platform is not None and (self.state_dir is not None or self.database_url is not None):
            raise UsageError(
                "--state-dir and --database-url name a local platform; with --url the action runs on"
                f" {platform.url}, on its own database: give one or the other"
            )
        return platform


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="A name for the token (who or what uses it)."),
    role: Role = typer.Option(Role.VIEWER, "--role", help="admin, operator or viewer."),
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
    url: str = UrlOption,
    token: str = TokenOption,
    token_file: Path = TokenFileOption,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create an API bearer token; it is printed once.

    Example: [bold]diskci platform token create ops-alice --role operator[/]
    """
    where = Where(state_dir, database_url, url, token, token_file)
    _run_action("system_create_api_token", {"name": name, "role": role.value}, json_out, where)


@token_app.command("list")
def token_list(
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
    url: str = UrlOption,
    token: str = TokenOption,
    token_file: Path = TokenFileOption,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """List API tokens (never the tokens themselves).

    Example: [bold]diskci platform token list --json[/]
    """
    _run_action(
        "system_list_api_tokens", {}, json_out, Where(state_dir, database_url, url, token, token_file)
    )


@token_app.command("revoke")
def token_revoke(
    name: str = typer.Argument(..., help="The token's name."),
    state_dir: Path = StateDirOption,
    database_url: str = DatabaseOption,
    url: str = UrlOption,
    token: str = TokenOption,
    token_file: Path = TokenFileOption,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Revoke an API token; it stops working at once.

    Example: [bold]diskci platform token revoke ops-alice[/]
    """
    # Naming the token on this dedicated command is the confirmation (it never asked for --yes).
    where = Where(state_dir, database_url, url, token, token_file)
    _run_action("system_revoke_api_token", {"name": name}, json_out, where, confirmed=True)


def _run_action(
    name: str, data: dict[str, Any], json_out: bool, where: Where, *, confirmed: bool = False
) -> None:
    remote = where.remote()
    if remote is not None:
        _say_where(f"platform {remote.url}")
        result = remote.call(get_action(name), data, confirm=confirmed)
    else:
        result = _invoke_locally(name, data, _settings(where.state_dir, where.database_url), confirmed)
    print_result(stdout, result, json_out=json_out)


def _invoke_locally(name: str, data: dict[str, Any], settings: PlatformSettings, confirmed: bool) -> Any:
    """``invoke()`` on the local database as an admin (whoever can open it may do anything to it)."""
    from diskci.platform.ports import Ports
    from diskci.platform.tasks import TaskQueue

    database = _existing_database(settings)
    queue = TaskQueue(settings, database=database)
    ports = Ports(enqueue=queue.enqueue_publication, enqueue_worker=queue.enqueue_ci_worker_task)
    actor = _actor()
    try:
        if confirmed and confirmation_needed(
            name, data, database=database, settings=settings, actor=actor, role=Role.ADMIN, ports=ports
        ):
            # --yes answers the confirmation the call would ask for: issued and redeemed at once (events).
            from diskci.platform.mcp.confirmations import bound_arguments, confirm_at_once

            data = bound_arguments(get_action(name), data, Role.ADMIN)
            confirm_at_once(database, name, data, actor=actor)
        return invoke(
            name,
            data,
            database=database,
            settings=settings,
            actor=actor,
            role=Role.ADMIN,
            confirmed=confirmed,
            ports=ports,
        )
    except ConfirmationRequired as exc:
        would_affect = preview_action(
            name, data, database=database, settings=settings, actor=actor, role=Role.ADMIN, ports=ports
        )
        raise unconfirmed(exc.action, would_affect) from exc


def _action_command(spec: ActionSpec) -> Callable[..., None]:
    def command(
        data: str = typer.Option(None, "--data", "-d", help="Input as JSON, @file.json, or - for stdin."),
        assignments: list[str] = typer.Option(
            [],
            "--set",
            "-s",
            help="FIELD=VALUE (VALUE read as the field's type, else as JSON); repeatable.",
        ),
        json_out: bool = typer.Option(
            False, "--json", help="Print the result as JSON (also whenever stdout is not a terminal)."
        ),
        yes: bool = typer.Option(False, "--yes", help="Confirm a destructive action."),
        state_dir: Path = StateDirOption,
        database_url: str = DatabaseOption,
        url: str = UrlOption,
        token: str = TokenOption,
        token_file: Path = TokenFileOption,
    ) -> None:
        where = Where(state_dir, database_url, url, token, token_file)
        where.remote()  # a bad --url or token combination is refused before the input is read
        values = parse_action_input(data, assignments, spec.input_model)
        _run_action(spec.name, values, json_out, where, confirmed=yes)

    fields = ", ".join(spec.input_model.model_fields) or "none"
    text, _, example = spec.description.partition("Example:")
    example = " ".join(example.split()) or "{}"
    command.__doc__ = (
        f"{text.strip()}\n\nInput fields: {fields}. Role: {spec.role.value}."
        + (" Destructive: needs --yes." if spec.destructive else "")
        + (f" Destructive {spec.destructive_note}: then needs --yes." if spec.destructive_note else "")
        + " With --url (DISKCI_URL) and a token it runs on that platform, with the token's role."
        + f"\n\nExample: [bold]diskci platform {spec.name} --data '{example}'[/]"
    )
    command.__name__ = spec.name
    return command


def register(app: typer.Typer) -> None:
    for spec in load_all().values():
        platform_app.command(spec.name, help=None)(_action_command(spec))
    from diskci.cli.secureboot import secureboot_app

    platform_app.add_typer(secureboot_app, name="secureboot")
    app.add_typer(platform_app, name="platform")
