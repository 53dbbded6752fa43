"""Action results for people and for scripts: a list result is a table on a terminal, JSON elsewhere.

A *list result* is an output model with one list of objects (the rows) beside nothing but counts
(``total``, ``limit``, ``next_offset``...): ``system_list_disk_image_publications``,
``system_list_ci_workers``, ``system_list_recent_events`` and the like. On a terminal it is drawn as a
rich table whose columns are the row model's preferred fields (``PREFERRED_COLUMNS``), or else its
first fields that fit a cell; the counts go in the caption. Every other result, every result with
``--json``, and every result when stdout is not a terminal (a script reads it) is the full JSON.

Cells are ``rich.text.Text``: what a result holds is never read as markup. Digests are shortened to
their first 12 hex digits, times to seconds, flags to yes/no; a row is one line, and a cell too long
for the terminal ends in an ellipsis (``--json`` has it all).
"""

from __future__ import annotations

import json
import re
import types
from datetime import UTC, datetime
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from diskci.cli.output import print_json

# The columns of each row model that people look for first, in order (fields the model lacks are
# skipped). Row models not named here get their first MAX_COLUMNS fields that fit a cell.
PREFERRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "PublicationOut": (
        "id",
        "platform",
        "version",
        "status",
        "is_default",
        "critical",
        "manifest_digest",
        "signed_at",
    ),
    "NodePlatformOut": (
        "name",
        "architectures",
        "default_publication_id",
        "retention_routine_days",
        "retention_critical_days",
        "image_build_repository",
        "updated_at",
    ),
    "NodeInstanceOut": ("id", "hostname", "platform", "status", "mac_addresses", "provider", "last_seen"),
    "CiWorkerOut": ("id", "hostname", "status", "labels", "current_job", "provider", "last_seen"),
    "RunSummaryOut": (
        "run_id",
        "platform",
        "ref",
        "status",
        "conclusion",
        "jobs",
        "duration_seconds",
        "publication_id",
        "created_at",
    ),
    "EventOut": ("id", "created_at", "type", "platform", "subject", "reason"),
    "TokenOut": ("name", "role", "created_at", "last_used_at", "revoked_at"),
    "WebhookOut": ("platform", "url", "secret_fingerprint", "rotated_at", "previous_valid_until"),
    "RetentionCandidateOut": (
        "id",
        "platform",
        "version",
        "critical",
        "rule",
        "manifest_digest",
        "created_at",
    ),
}
MAX_COLUMNS = 8
SHORT_DIGEST_HEX = 12
COLUMN_PADDING = 3  # a space either side of each cell, and the rule between cells (box.SIMPLE_HEAD)
_DIGEST = re.compile(r"^(?:(?P<algorithm>sha256|sha512):)?(?P<hex>[0-9a-f]{64}|[0-9a-f]{128})$")
_CELL_SCALARS = (str, int, float, bool, datetime)
_HEADERS = {"is_default": "default"}


def _union_args(annotation: Any) -> tuple[Any, ...] | None:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return None


def _model_list_item(annotation: Any) -> type[BaseModel] | None:
    """The row model of ``list[Row]`` (None for any other annotation)."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _is_count(annotation: Any) -> bool:
    """``int`` or ``int | None``: a count or an offset beside the rows."""
    args = _union_args(annotation)
    if args is not None:
        return all(a is int or a is type(None) for a in args) and int in args
    return annotation is int


def _fits_a_cell(annotation: Any) -> bool:
    """Scalars, optional scalars, lists of scalars and small models (shown as key=value pairs)."""
    args = _union_args(annotation)
    if args is not None:
        return all(a is type(None) or _fits_a_cell(a) for a in args)
    if get_origin(annotation) is list:
        return all(a in _CELL_SCALARS for a in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return all(
            f.annotation in _CELL_SCALARS or _is_count(f.annotation) for f in annotation.model_fields.values()
        )
    return annotation in _CELL_SCALARS


def rows_field(model: type[BaseModel]) -> str | None:
    """The field holding the rows when ``model`` is a list result, else None."""
    rows = [name for name, f in model.model_fields.items() if _model_list_item(f.annotation) is not None]
    if len(rows) != 1:
        return None
    others = [f.annotation for name, f in model.model_fields.items() if name != rows[0]]
    return rows[0] if all(_is_count(a) for a in others) else None


def columns(row_model: type[BaseModel]) -> list[str]:
    """The fields of ``row_model`` a table shows, in order."""
    fields = row_model.model_fields
    preferred = PREFERRED_COLUMNS.get(row_model.__name__)
    if preferred is not None:
        return [name for name in preferred if name in fields]
    return [name for name, f in fields.items() if _fits_a_cell(f.annotation)][:MAX_COLUMNS]


def header(name: str) -> str:
    return _HEADERS.get(name, name.replace("_", " "))


def cell_text(value: Any) -> str:
    """One value as the plain text of a cell."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        at = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return at.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, str):
        digest = _DIGEST.match(value)
        if digest is None:
            return value
        prefix = f"{digest['algorithm']}:" if digest["algorithm"] else ""
        return prefix + digest["hex"][:SHORT_DIGEST_HEX]
    if isinstance(value, BaseModel):
        return " ".join(f"{key}={cell_text(item)}" for key, item in value)
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _fitting(names: list[str], cells: list[list[str]], width: int) -> list[int]:
    """The indexes of the columns that fit ``width``, taken in their order of preference (a column too
    wide for what is left is skipped; the first column is always kept)."""
    kept: list[int] = []
    used = 0
    for i, name in enumerate(names):
        need = max([len(header(name)), *(len(row[i]) for row in cells)]) + COLUMN_PADDING
        if kept and used + need > width + 1:  # the first column has no rule before it
            continue
        kept.append(i)
        used += need
    return kept


def result_table(result: BaseModel, *, width: int | None = None) -> Table | None:
    """``result`` as a table when it is a list result, else None; with ``width``, only the columns
    that fit it (the caption says how many were left out)."""
    field = rows_field(type(result))
    if field is None:
        return None
    row_model = _model_list_item(type(result).model_fields[field].annotation)
    assert row_model is not None
    names = columns(row_model)
    rows: list[BaseModel] = getattr(result, field)
    cells = [[cell_text(getattr(row, name)) for name in names] for row in rows]
    kept = _fitting(names, cells, width) if width is not None else list(range(len(names)))
    caption = [f"{header(field)}: {len(rows)}"]
    caption += [
        f"{header(name)} {getattr(result, name)}"
        for name in type(result).model_fields
        if name != field and getattr(result, name) is not None
    ]
    if len(kept) < len(names):
        caption.append(f"+{len(names) - len(kept)} columns in --json")
    table = Table(
        caption=Text(" · ".join(caption)), box=box.SIMPLE_HEAD, header_style="bold", show_edge=False
    )
    for i in kept:
        # one line per row: a cell too long for the terminal ends in "…" (--json has every byte)
        table.add_column(Text(header(names[i])), no_wrap=True, overflow="ellipsis")
    for row_cells in cells:
        table.add_row(*(Text(row_cells[i]) for i in kept))
    return table


def print_result(console: Console, result: BaseModel, *, json_out: bool) -> None:
    """Print an action's result: JSON with ``--json`` or off a terminal, a table for a list result on
    a terminal, and highlighted JSON for any other result there."""
    if json_out or not console.is_terminal:
        print_json(result)
        return
    table = result_table(result, width=console.width)
    if table is not None:
        console.print(table)
    else:
        console.print_json(result.model_dump_json(by_alias=True))
