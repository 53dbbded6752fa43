"""A platform spec's YAML syntax error names the file, the line and column, and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.errors import SpecError
from diskci.spec import load_spec


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("name: x\npackages:\n  - a\n  b: [\n", "line 4, column 3", "expected <block end>"),
        ('name: "x\n', "line 2, column 1", "while scanning a quoted scalar (from line 1, column 7)"),
        ("a:\n\tb: 1\n", "line 2, column 1", "found character '\\t' that cannot start any token"),
    ],
)
def test_yaml_syntax_errors_say_where_and_what(tmp_path: Path, text: str, where: str, what: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid platform spec")
    assert f"(yaml) {where}: " in message and what in message
    assert "<unicode string>" not in message
    lines = message.splitlines()
    assert len(lines) >= 2  # the problem keeps its own lines


def test_the_offending_line_is_shown_with_a_caret(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\npackages:\n  - a\n  b: [\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert "\n      b: [\n      ^" in str(caught.value)
