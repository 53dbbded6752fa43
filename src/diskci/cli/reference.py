"""The CLI reference in README.md, generated from the typer app (a test keeps the two in sync).

``python -m diskci.cli.reference --write README.md`` rewrites the block between the markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import typer

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    out = [(path, cmd)]
    if _is_group(cmd):
        for name in sorted(cmd.commands):
            sub = cmd.commands[name]
            if not sub.hidden:
                out.extend(_walk(sub, [*path, name]))
    return out


def _is_group(cmd: Any) -> bool:
    # typer vendors its own click; duck-type instead of isinstance(click.Group).
    return hasattr(cmd, "commands")


def _plain(text: str) -> str:
    text = re.sub(r"\[/?[a-z ]*\]", "", text)  # rich markup
    return text.strip()


def render() -> str:
    from diskci.cli.main import app

    root = typer.main.get_command(app)
    lines: list[str] = []
    for path, cmd in _walk(root, ["diskci"]):
        if _is_group(cmd) and len(path) > 1:
            lines.append(f"### `{' '.join(path)}`\n")
            lines.append(_plain(cmd.help or "") + "\n")
            continue
        if len(path) == 1:
            continue
        ctx = cmd.context_class(cmd, info_name=" ".join(path))
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines.append(f"### `{' '.join(path)}`\n")
        lines.append(f"```\n{' '.join(path)} {usage}\n```\n")
        if cmd.help:
            lines.append(_plain(cmd.help) + "\n")
        opts = []
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False):
                names = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
                opts.append(f"| {names} | {_plain(p.help or '')} |")
        if opts:
            lines.append("| option | meaning |\n|---|---|\n" + "\n".join(opts) + "\n")
    return "\n".join(lines).rstrip() + "\n"


def splice(readme: str, reference: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"README has no {START} … {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference}{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="README to update in place")
    args = parser.parse_args(argv)
    ref = render()
    if args.write:
        args.write.write_text(splice(args.write.read_text(), ref))
    else:
        sys.stdout.write(ref)


if __name__ == "__main__":
    main()
