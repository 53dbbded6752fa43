"""``diskci.cli.result_tables``: which results are tables, their columns and cells, and JSON for scripts."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel
from rich.console import Console

from diskci.cli.result_tables import (
    MAX_COLUMNS,
    PREFERRED_COLUMNS,
    cell_text,
    columns,
    print_result,
    result_table,
    rows_field,
)
from diskci.platform.actions.catalog import load_all
from diskci.platform.actions.publications import ListPublicationsOutput
from diskci.platform.actions.tokens import ListTokensOutput, TokenOut

DIGEST = "sha256:" + "ab12" * 16
PUBLICATION = {
    "id": 7,
    "platform": "debian-12-amd64",
    "version": "[bold red]2026.11.0[/]",
    "reference": "127.0.0.1:5000/ops/disk-images/debian-12-amd64:2026.11.0",
    "status": "published",
    "failure_reason": None,
    "failure_detail": None,
    "manifest_digest": DIGEST,
    "composefs_digest": None,
    "artifacts": {},
    "signer_identity": "https://ci.example/ops/images/.gitea/workflows/build.yaml@refs/tags/v1",
    "signer_issuer": "https://ci.example",
    "signed_at": "2026-11-02T10:20:30.123456Z",
    "critical": False,
    "is_default": True,
    "created_at": "2026-11-02T10:20:31Z",
    "pruned_at": None,
}
LIST_ACTIONS = {
    "system_list_node_platforms",
    "system_list_node_instances",
    "system_list_ci_workers",
    "system_list_disk_image_webhooks",
    "system_list_disk_image_publications",
    "system_preview_disk_image_retention",
    "system_list_recent_events",
    "system_list_disk_image_ci_runs",
    "system_list_api_tokens",
}


def _terminal(width: int = 200) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system=None, width=width), out


def _publications() -> ListPublicationsOutput:
    return ListPublicationsOutput.model_validate(
        {"publications": [PUBLICATION], "total": 31, "limit": 1, "offset": 0, "next_offset": 1}
    )


def test_the_list_results_are_the_list_actions_and_only_they() -> None:
    tables = {name for name, spec in load_all().items() if rows_field(spec.output_model) is not None}
    assert tables == LIST_ACTIONS


def test_every_preferred_column_is_a_field_of_its_row_model() -> None:
    row_models: dict[str, type[BaseModel]] = {}
    for spec in load_all().values():
        field = rows_field(spec.output_model)
        if field is not None:
            (row,) = spec.output_model.model_fields[field].annotation.__args__  # type: ignore[union-attr]
            row_models[row.__name__] = row
    assert set(PREFERRED_COLUMNS) == set(row_models)
    for name, preferred in PREFERRED_COLUMNS.items():
        assert set(preferred) <= set(row_models[name].model_fields), name
        assert len(preferred) <= MAX_COLUMNS + 1, name


def test_a_row_model_without_preferences_shows_its_first_fields_that_fit_a_cell() -> None:
    class Nested(BaseModel):
        run_id: int
        job_name: str

    class Row(BaseModel):
        id: int
        payload: dict[str, str]
        labels: list[str]
        job: Nested | None
        at: datetime | None
        a: str
        b: str
        c: str
        d: str
        e: str

    assert columns(Row) == ["id", "labels", "job", "at", "a", "b", "c", "d"]


def test_cells() -> None:
    assert cell_text(DIGEST) == "sha256:" + ("ab12" * 3)
    assert cell_text("ab12" * 16) == "ab12" * 3
    assert cell_text("sha256:abc") == "sha256:abc"  # not a digest: as it is
    assert cell_text(None) == "—"
    assert (cell_text(True), cell_text(False)) == ("yes", "no")
    assert cell_text(datetime(2026, 11, 2, 10, 20, 30, 999, tzinfo=UTC)) == "2026-11-02 10:20:30Z"
    assert cell_text(datetime(2026, 11, 2, 10, 20, 30)) == "2026-11-02 10:20:30Z"  # naive: UTC
    assert cell_text(["amd64", "arm64"]) == "amd64, arm64"
    assert cell_text(12.345) == "12.3"
    assert cell_text({"b": 1, "a": "x"}) == '{"a": "x", "b": 1}'


def test_a_list_result_is_a_table_on_a_terminal_and_markup_stays_text() -> None:
    console, out = _terminal()
    print_result(console, _publications(), json_out=False)
    text = out.getvalue()
    head, _rule, row = [line for line in text.splitlines() if line.strip()][:3]
    for title in (
        "id",
        "platform",
        "version",
        "status",
        "default",
        "critical",
        "manifest digest",
        "signed at",
    ):
        assert title in head
    assert "[bold red]2026.11.0[/]" in row  # printed as the text it is, never as markup
    assert "sha256:" + "ab12" * 3 in row and "ab12" * 4 not in row
    assert "2026-11-02 10:20:30Z" in row and "yes" in row
    assert "publications: 1 · total 31 · limit 1 · offset 0 · next offset 1" in text
    assert "reference" not in head  # not a preferred column


def test_a_narrow_terminal_keeps_the_preferred_columns_that_fit() -> None:
    console, out = _terminal(width=60)
    print_result(console, _publications(), json_out=False)
    text = out.getvalue()
    head = text.splitlines()[0]
    assert head.split()[:3] == ["id", "platform", "version"]
    assert "signed at" not in head and "columns in --json" in text
    assert max(len(line) for line in text.splitlines()) <= 60


def test_an_empty_list_is_a_table_with_its_count() -> None:
    console, out = _terminal()
    print_result(console, ListTokensOutput(tokens=[]), json_out=False)
    assert "tokens: 0" in out.getvalue() and "role" in out.getvalue()


def test_json_for_scripts_and_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = _publications()
    not_a_terminal = Console(file=io.StringIO(), force_terminal=False)
    print_result(not_a_terminal, result, json_out=False)
    piped = capsys.readouterr().out
    console, out = _terminal()
    print_result(console, result, json_out=True)
    asked = capsys.readouterr().out
    assert out.getvalue() == ""
    assert piped == asked == result.model_dump_json(indent=2, by_alias=True) + "\n"
    assert json.loads(piped)["publications"][0]["version"] == "[bold red]2026.11.0[/]"


def test_a_result_that_is_not_a_list_is_json_on_a_terminal() -> None:
    token = TokenOut.model_validate(
        {"name": "[red]ops[/]", "role": "operator", "created_at": "2026-01-01T00:00:00Z"}
        | {"last_used_at": None, "revoked_at": None}
    )
    assert result_table(token) is None
    console, out = _terminal()
    print_result(console, token, json_out=False)
    assert json.loads(out.getvalue())["name"] == "[red]ops[/]"
