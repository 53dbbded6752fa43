"""The ``gitea-runner`` module as cloud-init user-data: valid ``#cloud-config`` YAML for both agents,
act_runner's config with ``<arch>:host`` labels, capacity and work directory, the registration token
only in the agent's 0600 EnvironmentFile, and act_runner registered only when its ``.runner`` file is
absent. (cloud-init's own schema check is in tests/integration/test_ec2_provider.py: it needs the
``cloud-init`` binary.)"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.errors import InvalidRequest
from diskci.platform.providers.base import WorkerMachine
from diskci.platform.providers.cloud_init import (
    ACT_RUNNER_CONFIG,
    ACT_RUNNER_ENV_FILE,
    ACT_RUNNER_REGISTER_SCRIPT,
    ACT_RUNNER_UNIT,
    DISKCI_RUNNER_ENV_FILE,
    GITEA_TOKEN_VARIABLE,
    GITEA_URL_VARIABLE,
    RunnerAgent,
    WorkerImage,
    agent_for_backend,
    render_user_data,
)
from diskci.platform.providers.runner_unit import TOKEN_VARIABLE, UNIT_NAME, URL_VARIABLE, parse_environment

TOKEN_MARK = "reg-token-0123"  # how the token begins, in any escaped form
TOKEN = TOKEN_MARK + '"quoted\\back$slash'  # a value that needs escaping in every format it passes


def machine(**overrides: Any) -> WorkerMachine:
    values: dict[str, Any] = {
        "instance_id": 7,
        "hostname": "ci-1",
        "region": "region-aws-us-east-1",
        "instance_type": "type-c5-2xlarge",
        "labels": ("amd64", "arm64"),
        "registration_url": "https://git.example:3000/",
        "registration_token": TOKEN,
    }
    values.update(overrides)
    return WorkerMachine(**values)


def files_of(user_data: str) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(user_data)
    return {entry["path"]: entry for entry in config["write_files"]}


@pytest.mark.parametrize("agent", list(RunnerAgent))
def test_the_user_data_is_cloud_config_yaml(agent: RunnerAgent) -> None:
    text = render_user_data(machine(hostname="ci-1.build.example"), agent)
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert (config["hostname"], config["fqdn"], config["preserve_hostname"]) == (
        "ci-1",
        "ci-1.build.example",
        False,
    )
    unit = UNIT_NAME if agent is RunnerAgent.DISKCI else ACT_RUNNER_UNIT
    assert f"/etc/systemd/system/{unit}" in files_of(text)
    assert config["runcmd"][-2:] == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit]]
    assert render_user_data(machine(hostname="ci-1.build.example"), agent) == text  # a retry sends the same


@pytest.mark.parametrize("agent", list(RunnerAgent))
def test_the_token_is_only_in_the_0600_environment_file(agent: RunnerAgent) -> None:
    text = render_user_data(machine(), agent)
    env_path = str(DISKCI_RUNNER_ENV_FILE if agent is RunnerAgent.DISKCI else ACT_RUNNER_ENV_FILE)
    files = files_of(text)
    holding = [path for path, entry in files.items() if TOKEN_MARK in entry["content"]]
    assert holding == [env_path] and text.count(TOKEN_MARK) == 1
    assert files[env_path]["permissions"] == "0600" and files[env_path]["owner"] == "root:root"
    environment = parse_environment(files[env_path]["content"])
    if agent is RunnerAgent.DISKCI:
        assert environment == {TOKEN_VARIABLE: TOKEN, URL_VARIABLE: "https://git.example:3000/"}
    else:
        assert environment == {GITEA_TOKEN_VARIABLE: TOKEN, GITEA_URL_VARIABLE: "https://git.example:3000/"}


def test_act_runner_config_has_host_labels_capacity_and_work_dir() -> None:
    image = WorkerImage(capacity=2, act_runner_dir="/srv/act_runner")
    files = files_of(render_user_data(machine(), RunnerAgent.ACT_RUNNER, image=image))
    config = yaml.safe_load(files[str(ACT_RUNNER_CONFIG)]["content"])
    assert config["runner"]["labels"] == ["amd64:host", "arm64:host"]
    assert config["runner"]["capacity"] == 2
    assert config["runner"]["file"] == "/srv/act_runner/.runner"
    assert config["host"] == {"workdir_parent": "/srv/act_runner/work"}
    assert config["cache"] == {"enabled": False}
    unit = files[f"/etc/systemd/system/{ACT_RUNNER_UNIT}"]["content"].splitlines()
    assert f"EnvironmentFile={ACT_RUNNER_ENV_FILE}" in unit
    assert "WorkingDirectory=/srv/act_runner" in unit
    assert f"ExecStartPre={ACT_RUNNER_REGISTER_SCRIPT}" in unit
    assert f"ExecStart=/usr/local/bin/act_runner daemon --config {ACT_RUNNER_CONFIG}" in unit
    assert files[str(ACT_RUNNER_REGISTER_SCRIPT)]["permissions"] == "0755"


def test_the_diskci_agent_registers_then_runs_with_the_unit_the_local_provider_runs() -> None:
    image = WorkerImage(diskci_python="/opt/venv/bin/python", diskci_runner_dir="/srv/runner")
    text = render_user_data(machine(), RunnerAgent.DISKCI, image=image)
    unit = files_of(text)[f"/etc/systemd/system/{UNIT_NAME}"]["content"].splitlines()
    assert f"EnvironmentFile={DISKCI_RUNNER_ENV_FILE}" in unit
    pre = next(line for line in unit if line.startswith("ExecStartPre="))
    assert shlex.split(pre.removeprefix("ExecStartPre=")) == [
        "/opt/venv/bin/python", "-m", "diskci", "runner", "register",
        "--url", "${DISKCI_RUNNER_URL}", "--name", "ci-1", "--labels", "amd64,arm64",
        "--state-dir", "/srv/runner",
    ]  # fmt: skip
    assert "ExecStart=/opt/venv/bin/python -m diskci runner run --state-dir /srv/runner" in unit
    assert yaml.safe_load(text)["runcmd"][0] == ["mkdir", "-p", "-m", "0700", "/srv/runner"]


def test_act_runner_registers_only_when_its_runner_file_is_absent(tmp_path: Path) -> None:
    """The register script run as systemd runs it (the EnvironmentFile's values in its environment),
    with a test double for act_runner that records its arguments and writes ``.runner``."""
    calls = tmp_path / "calls"
    double = tmp_path / "act_runner_double"
    double.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" >> "$CALLS"\necho --- >> "$CALLS"\n'
        'echo \'{"uuid": "u"}\' > .runner\n'
    )
    double.chmod(0o755)
    state = tmp_path / "act_runner"
    state.mkdir()
    image = WorkerImage(act_runner=str(double), act_runner_dir=str(state))
    files = files_of(render_user_data(machine(), RunnerAgent.ACT_RUNNER, image=image))
    script = tmp_path / "register"
    script.write_text(files[str(ACT_RUNNER_REGISTER_SCRIPT)]["content"])
    script.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "CALLS": str(calls),
        **parse_environment(files[str(ACT_RUNNER_ENV_FILE)]["content"]),
    }
    for _ in range(2):
        subprocess.run([str(script)], env=env, check=True, stdin=subprocess.DEVNULL, timeout=30)
    recorded = calls.read_text().split("---\n")
    assert recorded[1:] == [""]  # one call: the second run found .runner and did nothing
    assert recorded[0].splitlines() == [
        str(state), "register", "--no-interactive", "--config", str(ACT_RUNNER_CONFIG),
        "--name", "ci-1", "--labels", "amd64:host,arm64:host",
        "--instance", "https://git.example:3000/", "--token", TOKEN,
    ]  # fmt: skip
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_bad_inputs_are_refused_naming_what_is_wrong() -> None:
    with pytest.raises(InvalidRequest, match=r"label 'amd64:host'"):
        render_user_data(machine(labels=("amd64:host",)), RunnerAgent.ACT_RUNNER)
    with pytest.raises(InvalidRequest, match=r"registration_url 'ftp://x'"):
        render_user_data(machine(registration_url="ftp://x"), RunnerAgent.DISKCI)
    with pytest.raises(InvalidRequest, match=r"act_runner 'act_runner': not an absolute path"):
        WorkerImage(act_runner="act_runner")
    with pytest.raises(InvalidRequest, match=r"capacity 0"):
        WorkerImage(capacity=0)
    with pytest.raises(InvalidRequest, match=r"CI backend 'jenkins'.*choices: embedded, gitea"):
        agent_for_backend("jenkins")
    assert (agent_for_backend("embedded"), agent_for_backend("gitea")) == (
        RunnerAgent.DISKCI,
        RunnerAgent.ACT_RUNNER,
    )
