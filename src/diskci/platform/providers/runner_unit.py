"""How the ``gitea-runner`` module starts a CI worker's runner: two command lines (register, then run),
an EnvironmentFile with the one-time token and the platform URL, and the systemd unit that ties them
together on a real machine (``diskci-runner.service``).

The local provider runs exactly these command lines under its supervisor, which reads the same
EnvironmentFile and expands ``${NAME}`` in the commands as systemd does; a cloud provider writes the
unit and the file with cloud-init. The token lives only in the EnvironmentFile (mode 0600), never on a
command line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNIT_NAME = "diskci-runner.service"
TOKEN_VARIABLE = "DISKCI_RUNNER_TOKEN"
URL_VARIABLE = "DISKCI_RUNNER_URL"
REVOKED_EXIT_STATUS = 3  # the runner's exit status when the platform refuses its credentials
DRAIN_TIMEOUT_SECONDS = 600  # the runner's default --drain-timeout
STOP_TIMEOUT_SECONDS = DRAIN_TIMEOUT_SECONDS + 60  # systemd waits this long after SIGTERM
RESTART_SECONDS = 5

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class RunnerService:
    """The runner of one CI worker: its name, labels, state directory and the python that runs diskci."""

    name: str
    labels: Sequence[str]
    state_dir: Path
    environment_file: Path
    python: str = field(default=sys.executable)

    @property
    def register_command(self) -> list[str]:
        """``python -m diskci runner register ...`` (the token comes from ``DISKCI_RUNNER_TOKEN``)."""
        return [
            self.python, "-m", "diskci", "runner", "register",
            "--url", f"${{{URL_VARIABLE}}}",
            "--name", self.name,
            "--labels", ",".join(self.labels),
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip

    @property
    def run_command(self) -> list[str]:
        """``python -m diskci runner run --state-dir DIR`` (the daemon)."""
        return [self.python, "-m", "diskci", "runner", "run", "--state-dir", str(self.state_dir)]


def _quote(arg: str) -> str:
    """One argument of a systemd Exec line: ``${NAME}`` stays a variable; ``%`` and other ``$`` are
    literal; quoted when it has spaces, quotes or backslashes, or is empty."""
    parts = _VARIABLE.split(arg)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"${{{part}}}")
        else:
            out.append(part.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$"))
    text = "".join(out)
    if not arg or any(c.isspace() or c in "\"'\\;" for c in arg):
        return f'"{text}"'
    return text


def exec_line(argv: Sequence[str]) -> str:
    return " ".join(_quote(a) for a in argv)


def render_unit(service: RunnerService, *, description: str) -> str:
    """The systemd unit file ``diskci-runner.service`` of ``service``."""
    return service_unit(
        description=description,
        environment_file=str(service.environment_file),
        working_directory=str(service.state_dir),
        register=service.register_command,
        run=service.run_command,
        prevent_restart_on=REVOKED_EXIT_STATUS,
    )


def service_unit(
    *,
    description: str,
    environment_file: str,
    working_directory: str,
    register: Sequence[str],
    run: Sequence[str],
    prevent_restart_on: int | None = None,
) -> str:
    """A CI runner's systemd unit: register (when not registered yet) before start, then run; stopped
    with SIGTERM (the job drains), restarted on failure unless it exits ``prevent_restart_on``."""
    if "\n" in description:
        raise ValueError("a unit description is one line")
    lines = [
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"EnvironmentFile={environment_file}",
        f"WorkingDirectory={working_directory}",
        f"ExecStartPre={exec_line(register)}",
        f"ExecStart={exec_line(run)}",
        "KillSignal=SIGTERM",
        "KillMode=control-group",
        f"TimeoutStopSec={STOP_TIMEOUT_SECONDS}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
    ]
    if prevent_restart_on is not None:
        lines.append(f"RestartPreventExitStatus={prevent_restart_on}")
    return "\n".join([*lines, "", "[Install]", "WantedBy=multi-user.target", ""])


def render_environment(values: Mapping[str, str]) -> str:
    """An EnvironmentFile: one ``NAME="value"`` a line (backslash and double quote escaped)."""
    lines = []
    for name, value in values.items():
        if not _NAME.match(name) or "\n" in value or "\0" in value:
            raise ValueError(f"environment variable {name!r}: not a name, or a value with a newline")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + "\n"


def parse_environment(text: str) -> dict[str, str]:
    """What ``render_environment`` wrote (and the simple forms systemd reads: ``NAME=value``, comments)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[name] = value
    return values


def expand(argv: Sequence[str], environment: Mapping[str, str]) -> list[str]:
    """``argv`` with each ``${NAME}`` replaced by its value in ``environment`` (empty when unset), as
    systemd expands Exec lines."""
    return [_VARIABLE.sub(lambda m: environment.get(m.group(1), ""), arg) for arg in argv]
