"""The runner's state file, ``DIR/runner.json``: which platform, which runner, its credentials.

Written once by ``diskci runner register``, atomically (a temporary file 0600 in the same directory,
renamed over the old one) in a directory made 0700; read by ``run`` and ``status``. ``public()`` is the
state with the token hidden, for ``status`` and logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diskci.errors import UsageError

__all__ = ["STATE_FILE", "NotRegistered", "RunnerState", "is_registered", "load", "save"]

STATE_FILE = "runner.json"
FORMAT = 1


class NotRegistered(UsageError):
    """A state directory without a (readable, well-formed) runner state file."""


@dataclass(frozen=True)
class RunnerState:
    url: str
    name: str
    uuid: str
    token: str
    id: str = ""
    labels: list[str] = field(default_factory=list)
    registered_at: str = ""

    def public(self) -> dict[str, Any]:
        """The state without its secret (the token), as ``status --json`` prints it."""
        data = asdict(self)
        data["token"] = "***" if self.token else ""
        return data


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def work_dir(state_dir: Path) -> Path:
    """Where the runner's tasks (clones, act's cache) go."""
    return Path(state_dir) / "work"


def is_registered(state_dir: Path) -> bool:
    return state_path(state_dir).is_file()


def load(state_dir: Path) -> RunnerState:
    path = state_path(state_dir)
    hint = f"Register first: diskci runner register --url URL --token TOKEN --state-dir {state_dir}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotRegistered(f"{path}: no runner is registered here", hint=hint) from None
    except (OSError, ValueError) as exc:
        raise NotRegistered(f"{path}: not a runner state file ({exc})", hint=hint) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NotRegistered(f"{path}: not a runner state file (format {FORMAT} expected)", hint=hint)
    try:
        state = RunnerState(
            url=str(data["url"]),
            name=str(data["name"]),
            uuid=str(data["uuid"]),
            token=str(data["token"]),
            id=str(data.get("id", "")),
            labels=[str(label) for label in data.get("labels", [])],
            registered_at=str(data.get("registered_at", "")),
        )
    except (KeyError, TypeError) as exc:
        raise NotRegistered(f"{path}: the state file lacks {exc}", hint=hint) from exc
    if not state.uuid or not state.token:
        raise NotRegistered(f"{path}: the state file has no runner uuid or token", hint=hint)
    return state


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid():
        os.chmod(path, 0o700)


def save(state_dir: Path, state: RunnerState) -> Path:
    """Write the state file atomically, mode 0600; returns its path."""
    state_dir = Path(state_dir)
    _private_dir(state_dir)
    path = state_path(state_dir)
    text = json.dumps({"format": FORMAT, **asdict(state)}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=state_dir)  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
