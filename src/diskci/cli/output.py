"""Printing results: JSON for scripts (``--json``), rich tables and lines for people."""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from rich.console import Console

stdout = Console(highlight=False)


def print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2, by_alias=True)
    else:
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
    sys.stdout.write(text + "\n")
