"""The ``gitea-runner`` module for a real machine, as cloud-init user-data (``#cloud-config``).

A cloud provider hands ``render_user_data(machine, machine.agent)`` to the machine it makes (``RunnerAgent``
lives in ``base``, beside ``WorkerMachine``; it is re-exported here). The machine image
carries the agent's program (``WorkerImage`` says where); the user-data configures and starts it:

- ``RunnerAgent.DISKCI`` (the embedded CI backend): ``diskci-runner.service`` from ``runner_unit``,
  the same unit and command lines the ``local`` provider runs (``diskci runner register``, which
  leaves a registered state directory as it is, then ``diskci runner run``).
- ``RunnerAgent.ACT_RUNNER`` (the ``gitea`` backend): Gitea's act_runner — its ``config.yaml``
  (labels ``<arch>:host``, capacity, work directory), ``act_runner.service`` whose ``ExecStartPre``
  registers the runner only when its ``.runner`` file is absent, then ``act_runner daemon``.

The registration token is written in one place only: the agent's EnvironmentFile, mode 0600, read by
systemd into the service's environment. Every file name, label and URL is put in the YAML by PyYAML's
safe dumper and in shell or unit lines by their quoting functions, never pasted into text.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from diskci.errors import InvalidRequest
from diskci.platform.providers.base import RunnerAgent, WorkerMachine
from diskci.platform.providers.runner_unit import (
    DRAIN_TIMEOUT_SECONDS,
    TOKEN_VARIABLE,
    UNIT_NAME,
    URL_VARIABLE,
    RunnerService,
    render_environment,
    render_unit,
    service_unit,
)

__all__ = [
    "ACT_RUNNER_CONFIG",
    "ACT_RUNNER_ENV_FILE",
    "ACT_RUNNER_REGISTER_SCRIPT",
    "ACT_RUNNER_UNIT",
    "DISKCI_RUNNER_ENV_FILE",
    "GITEA_TOKEN_VARIABLE",
    "GITEA_URL_VARIABLE",
    "RunnerAgent",
    "WorkerImage",
    "act_runner_config",
    "act_runner_labels",
    "agent_for_backend",
    "render_user_data",
]

HEADER = "#cloud-config\n"
SYSTEMD_DIR = PurePosixPath("/etc/systemd/system")

# diskci's own runner (the embedded backend)
DISKCI_RUNNER_ENV_FILE = PurePosixPath("/etc/diskci-runner/env")

# Gitea's act_runner (the gitea backend)
ACT_RUNNER_UNIT = "act_runner.service"
ACT_RUNNER_ENV_FILE = PurePosixPath("/etc/act_runner/env")
ACT_RUNNER_CONFIG = PurePosixPath("/etc/act_runner/config.yaml")
ACT_RUNNER_REGISTER_SCRIPT = PurePosixPath("/usr/local/libexec/diskci/act-runner-register")
ACT_RUNNER_FILE = ".runner"  # in its state directory: act_runner register writes it
ACT_RUNNER_WORK_DIR = "work"  # in its state directory: host mode puts each job's workspace under it
GITEA_URL_VARIABLE = "GITEA_INSTANCE_URL"
GITEA_TOKEN_VARIABLE = "GITEA_RUNNER_REGISTRATION_TOKEN"
ACT_RUNNER_JOB_TIMEOUT = "3h"


_AGENT_OF_BACKEND = {"embedded": RunnerAgent.DISKCI, "gitea": RunnerAgent.ACT_RUNNER}


def agent_for_backend(backend: str) -> RunnerAgent:
    """The agent CI workers of the CI backend ``backend`` (``embedded`` or ``gitea``) run."""
    try:
        return _AGENT_OF_BACKEND[backend]
    except KeyError:
        choices = ", ".join(sorted(_AGENT_OF_BACKEND))
        raise InvalidRequest(
            f"CI backend {backend!r}: no CI worker agent for it (choices: {choices})"
        ) from None


@dataclass(frozen=True, kw_only=True)
class WorkerImage:
    """What the machine image carries: the python diskci is installed for (with act, mmdebstrap and the
    build's other tools), the act_runner binary; where each agent keeps its state, and how many jobs
    act_runner runs at once."""

    diskci_python: str = "/opt/diskci/bin/python"
    act_runner: str = "/usr/local/bin/act_runner"
    diskci_runner_dir: str = "/var/lib/diskci-runner"
    act_runner_dir: str = "/var/lib/act_runner"
    capacity: int = 1

    def __post_init__(self) -> None:
        for name in ("diskci_python", "act_runner", "diskci_runner_dir", "act_runner_dir"):
            if not PurePosixPath(getattr(self, name)).is_absolute():
                raise InvalidRequest(f"{name} {getattr(self, name)!r}: not an absolute path")
        if self.capacity < 1:
            raise InvalidRequest(f"capacity {self.capacity}: a runner runs at least one job at a time")


def act_runner_labels(labels: tuple[str, ...] | list[str]) -> list[str]:
    """act_runner's labels for a worker's labels: each ``<name>:host`` (its jobs run on the host)."""
    out = []
    for label in labels:
        if not label or ":" in label or "," in label or any(c.isspace() for c in label):
            raise InvalidRequest(f"label {label!r}: not a plain label name (no ':', ',' or spaces)")
        out.append(f"{label}:host")
    return out


def act_runner_config(labels: list[str], *, image: WorkerImage) -> dict[str, Any]:
    """act_runner's ``config.yaml`` (as a mapping): its registration file, capacity, labels, host work
    directory; the cache server is off (builds pass data through the registry)."""
    state_dir = PurePosixPath(image.act_runner_dir)
    return {
        "log": {"level": "info"},
        "runner": {
            "file": str(state_dir / ACT_RUNNER_FILE),
            "capacity": image.capacity,
            "timeout": ACT_RUNNER_JOB_TIMEOUT,
            "shutdown_timeout": f"{DRAIN_TIMEOUT_SECONDS}s",  # drain on SIGTERM, as diskci's runner
            "insecure": False,
            "fetch_timeout": "5s",
            "fetch_interval": "2s",
            "labels": labels,
        },
        "cache": {"enabled": False},
        "host": {"workdir_parent": str(state_dir / ACT_RUNNER_WORK_DIR)},
    }


def _register_script(machine: WorkerMachine, image: WorkerImage, labels: list[str]) -> str:
    """The ``ExecStartPre`` of act_runner.service: register once, when ``.runner`` is absent. The URL
    and the token come from the service's environment (its EnvironmentFile), never from this file."""
    argv = [
        image.act_runner, "register", "--no-interactive",
        "--config", str(ACT_RUNNER_CONFIG),
        "--name", machine.hostname,
        "--labels", ",".join(labels),
    ]  # fmt: skip
    state_dir = PurePosixPath(image.act_runner_dir)
    return "\n".join(
        [
            "#!/bin/sh",
            "# Register this CI worker's act_runner with Gitea, once: not when it is registered already.",
            "set -eu",
            f"if [ -s {shlex.quote(str(state_dir / ACT_RUNNER_FILE))} ]; then",
            "  exit 0",
            "fi",
            f"cd {shlex.quote(str(state_dir))}",
            f'exec {shlex.join(argv)} --instance "${GITEA_URL_VARIABLE}" --token "${GITEA_TOKEN_VARIABLE}"',
            "",
        ]
    )


def _act_runner_unit(machine: WorkerMachine, image: WorkerImage) -> str:
    description = (
        f"Gitea act_runner of CI worker {machine.hostname} (diskci NodeInstance {machine.instance_id})"
    )
    return service_unit(
        description=description,
        environment_file=str(ACT_RUNNER_ENV_FILE),
        working_directory=str(image.act_runner_dir),
        register=[str(ACT_RUNNER_REGISTER_SCRIPT)],
        run=[image.act_runner, "daemon", "--config", str(ACT_RUNNER_CONFIG)],
    )


def _file(path: PurePosixPath, content: str, permissions: str) -> dict[str, Any]:
    return {"path": str(path), "owner": "root:root", "permissions": permissions, "content": content}


def _diskci_files(
    machine: WorkerMachine, image: WorkerImage
) -> tuple[list[dict[str, Any]], str, PurePosixPath]:
    service = RunnerService(
        name=machine.hostname,
        labels=machine.labels,
        state_dir=Path(image.diskci_runner_dir),  # paths on the worker (POSIX, as here)
        environment_file=Path(DISKCI_RUNNER_ENV_FILE),
        python=image.diskci_python,
    )
    environment = {TOKEN_VARIABLE: machine.registration_token, URL_VARIABLE: machine.registration_url}
    description = f"diskci CI worker runner ({machine.hostname}, NodeInstance {machine.instance_id})"
    files = [
        _file(DISKCI_RUNNER_ENV_FILE, render_environment(environment), "0600"),
        _file(SYSTEMD_DIR / UNIT_NAME, render_unit(service, description=description), "0644"),
    ]
    return files, UNIT_NAME, PurePosixPath(image.diskci_runner_dir)


def _act_runner_files(
    machine: WorkerMachine, image: WorkerImage
) -> tuple[list[dict[str, Any]], str, PurePosixPath]:
    labels = act_runner_labels(machine.labels)
    environment = {
        GITEA_URL_VARIABLE: machine.registration_url,
        GITEA_TOKEN_VARIABLE: machine.registration_token,
    }
    config = yaml.safe_dump(act_runner_config(labels, image=image), sort_keys=False)
    files = [
        _file(ACT_RUNNER_ENV_FILE, render_environment(environment), "0600"),
        _file(ACT_RUNNER_CONFIG, config, "0644"),
        _file(ACT_RUNNER_REGISTER_SCRIPT, _register_script(machine, image, labels), "0755"),
        _file(SYSTEMD_DIR / ACT_RUNNER_UNIT, _act_runner_unit(machine, image), "0644"),
    ]
    return files, ACT_RUNNER_UNIT, PurePosixPath(image.act_runner_dir)


class _BlockDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing multi-line strings (files' contents) as literal blocks and a list
    of one-line strings (a command's argv) on one line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    flow = bool(value) and all(isinstance(v, str) and "\n" not in v for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_BlockDumper.add_representer(str, _represent_str)
_BlockDumper.add_representer(list, _represent_list)


def render_user_data(machine: WorkerMachine, agent: RunnerAgent, *, image: WorkerImage | None = None) -> str:
    """The ``#cloud-config`` user-data that makes ``machine`` a CI worker running ``agent``: its host
    name, the agent's files, and the commands that create its state directory and start its unit.
    The same machine gives the same text (a retried create sends the same request)."""
    image = image or WorkerImage()
    if not machine.registration_url.startswith(("http://", "https://")):
        raise InvalidRequest(f"registration_url {machine.registration_url!r}: not an http(s) URL")
    if agent is RunnerAgent.DISKCI:
        files, unit, state_dir = _diskci_files(machine, image)
    else:
        files, unit, state_dir = _act_runner_files(machine, image)
    name, _, domain = machine.hostname.partition(".")
    config: dict[str, Any] = {"preserve_hostname": False, "hostname": name}
    if domain:
        config["fqdn"] = machine.hostname
    config["write_files"] = files
    config["runcmd"] = [
        ["mkdir", "-p", "-m", "0700", str(state_dir)],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", unit],
    ]
    body = yaml.dump(config, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=1000)
    return HEADER + body
