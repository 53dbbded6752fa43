"""The README's CLI reference is the one generated from the typer app."""

from pathlib import Path

from diskci.cli.reference import END, START, render, splice

ROOT = Path(__file__).resolve().parents[2]


def test_readme_cli_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme
    expected = splice(readme, render())
    assert readme == expected, (
        "README CLI reference is stale: run `python -m diskci.cli.reference --write README.md`"
    )


def test_every_command_has_help_with_an_example() -> None:
    from typing import Any

    import typer

    from diskci.cli.main import app

    missing = []

    def walk(cmd: Any, path: str) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
        elif "Example" not in (cmd.help or ""):
            missing.append(path)

    walk(typer.main.get_command(app), "diskci")
    assert not missing, f"commands without an Example in --help: {missing}"
