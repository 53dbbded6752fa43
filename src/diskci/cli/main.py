"""The ``diskci`` entry point: assembles the command groups and turns DiskciError into a message
and an exit code (the only place that does)."""

from __future__ import annotations

import importlib
import sys

import typer

from diskci import __version__
from diskci.console import setup_logging, stderr
from diskci.errors import DiskciError

# Each module has ``register(app)``; the order is the order of ``diskci --help``.
COMMAND_MODULES = (
    "diskci.cli.spec",
    "diskci.cli.build",
    "diskci.cli.fsverity",
    "diskci.cli.composefs",
    "diskci.cli.netboot",
    "diskci.cli.platform",
    "diskci.cli.publish",
    "diskci.cli.authority",
    "diskci.cli.demo",
)

app = typer.Typer(
    name="diskci",
    help="Disk image CI: build, sign, publish and netboot reproducible Debian/Ubuntu node images.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"diskci {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    setup_logging(verbose)


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    try:
        app(standalone_mode=True)
    except DiskciError as exc:
        stderr.print(f"[bold red]error:[/] {exc.diagnostics()}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
