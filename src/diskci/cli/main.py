"""The ``diskci`` entry point: assembles the command groups and turns DiskciError into a message
and an exit code (the only place that does)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable

import typer
from rich.markup import escape

from diskci import __version__
from diskci.console import setup_logging, stderr
from diskci.errors import DiskciError

# Each module has ``register(app)``, with the top-level command names it adds; the order is the order
# of ``diskci --help``. ``main()`` imports only the module of the command being run, so a command does
# not pay for the others' imports (the platform group loads SQLAlchemy).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "diskci.cli.spec": ("spec",),
    "diskci.cli.build": ("build",),
    "diskci.cli.cache": ("cache",),
    "diskci.cli.fsverity": ("fsverity",),
    "diskci.cli.composefs": ("composefs",),
    "diskci.cli.netboot": ("netboot",),
    "diskci.cli.platform": ("platform",),
    "diskci.cli.publish": ("sign", "verify", "push", "pull", "notify", "publish"),
    "diskci.cli.authority": ("authority",),
    "diskci.cli.ci": ("ci",),
    "diskci.cli.runner": ("runner",),
    "diskci.cli.demo": ("demo",),
}


def _version(value: bool) -> None:
    if value:
        print(f"diskci {__version__}")
        raise typer.Exit()


def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    setup_logging(verbose)


def build_app(modules: Iterable[str] = COMMAND_MODULES) -> typer.Typer:
    """The typer app with the command groups of ``modules`` (all of them by default)."""
    application = typer.Typer(
        name="diskci",
        help="Disk image CI: build, sign, publish and netboot reproducible Debian/Ubuntu node images.",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    application.callback()(_root)
    for name in modules:
        importlib.import_module(name).register(application)
    return application


def _module_for(argv: list[str]) -> str | None:
    """The command module of the first command word in ``argv`` (None: help, version, unknown)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return None
    for module, commands in COMMAND_MODULES.items():
        if words[0] in commands:
            return module
    return None


def __getattr__(name: str) -> typer.Typer:
    # ``from diskci.cli.main import app``: the whole app (documentation, tests).
    if name == "app":
        application = build_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)


def main() -> None:
    module = _module_for(sys.argv[1:])
    application = build_app([module]) if module else build_app()
    try:
        application(standalone_mode=True)
    except DiskciError as exc:
        # escaped: messages quote console lines, paths and argv, which may look like markup ([/dev/...])
        stderr.print(f"[bold red]error:[/] {escape(exc.diagnostics())}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
