"""Compute providers without servers: the catalog checks name the bad field and the choices, the
runner's systemd unit and EnvironmentFile are rendered as the module installs them, and the process
table reader tells a live process from a gone one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from diskci.errors import InvalidRequest
from diskci.platform.providers import UnknownProvider, catalog, proctable, provider
from diskci.platform.providers.base import UnknownInstanceType, UnknownRegion
from diskci.platform.providers.local import LocalProvider, instance_of
from diskci.platform.providers.runner_unit import (
    RunnerService,
    exec_line,
    expand,
    parse_environment,
    render_environment,
    render_unit,
)
from diskci.platform.settings import PlatformSettings


def test_the_local_catalog_checks_region_and_type_naming_the_field_and_choices() -> None:
    local = catalog("local")
    small = local.instance_type("local", "local.small")
    assert 1 <= small.cpus <= (os.cpu_count() or 1) and small.memory_mib >= 1
    assert "not enforced" in small.description and "capped at what the host has" in small.description
    with pytest.raises(UnknownRegion, match=r"provider_region_id 'eu-west-1'.*choices: local\)"):
        local.instance_type("eu-west-1", "local.small")
    with pytest.raises(
        UnknownInstanceType, match=r"provider_instance_type_id 't3.micro'.*local.small, local.large"
    ):
        local.instance_type("local", "t3.micro")
    with pytest.raises(UnknownProvider, match=r"provider 'ec9'.*choices: ec2, local"):
        catalog("ec9")


def test_the_registry_builds_the_local_provider_under_the_state_dir(tmp_path: Path) -> None:
    settings = PlatformSettings(state_dir=tmp_path, secret_key="k" * 40)  # type: ignore[arg-type]
    built = provider("local", settings)
    assert isinstance(built, LocalProvider) and built.workers_dir == tmp_path / "workers"
    assert built.lookup(7) is None and built.get("local-7").value == "gone"
    built.destroy("local-7")  # nothing there: not an error
    assert instance_of("local-12") == 12
    with pytest.raises(InvalidRequest, match="not a local worker's"):
        instance_of("i-0123")


def _service() -> RunnerService:
    return RunnerService(
        name="ci-1",
        labels=["amd64", "arm64"],
        state_dir=Path("/var/lib/diskci-runner"),
        environment_file=Path("/etc/diskci/runner.env"),
        python="/usr/bin/python3",
    )


def test_the_unit_file_runs_register_then_run_and_is_restarted_unless_revoked() -> None:
    unit = render_unit(_service(), description="diskci CI worker runner (ci-1)")
    lines = unit.splitlines()
    assert lines[0] == "[Unit]" and "[Service]" in lines and "[Install]" in lines
    assert "EnvironmentFile=/etc/diskci/runner.env" in lines
    assert (
        "ExecStartPre=/usr/bin/python3 -m diskci runner register --url ${DISKCI_RUNNER_URL} --name ci-1 "
        "--labels amd64,arm64 --state-dir /var/lib/diskci-runner"
    ) in lines
    assert "ExecStart=/usr/bin/python3 -m diskci runner run --state-dir /var/lib/diskci-runner" in lines
    for setting in (
        "KillSignal=SIGTERM",
        "TimeoutStopSec=660",
        "Restart=on-failure",
        "RestartPreventExitStatus=3",
    ):
        assert setting in lines
    assert "TOKEN" not in unit.replace("EnvironmentFile", "")  # the token only in the EnvironmentFile
    with pytest.raises(ValueError):
        render_unit(_service(), description="two\nlines")


def test_exec_lines_quote_as_systemd_reads_them() -> None:
    assert exec_line(["/bin/x", "a b", "50%", "$HOME", "${URL}", ""]) == '/bin/x "a b" 50%% $$HOME ${URL} ""'
    assert exec_line(['say "hi"']) == '"say \\"hi\\""'


def test_the_environment_file_round_trips_and_expands_the_commands() -> None:
    values = {"DISKCI_RUNNER_TOKEN": 'ab"c\\d', "DISKCI_RUNNER_URL": "http://127.0.0.1:8480"}
    text = render_environment(values)
    assert text.splitlines()[1] == 'DISKCI_RUNNER_URL="http://127.0.0.1:8480"'
    assert parse_environment("# comment\n" + text + "PLAIN=x\n") == {**values, "PLAIN": "x"}
    assert expand(_service().register_command, values)[6] == "http://127.0.0.1:8480"
    assert expand(["${MISSING}x"], {}) == ["x"]
    with pytest.raises(ValueError):
        render_environment({"BAD NAME": "x"})
    with pytest.raises(ValueError):
        render_environment({"OK": "two\nlines"})


def test_the_process_table_knows_a_process_by_pid_and_start_time() -> None:
    me = proctable.identify(os.getpid())
    assert me is not None and proctable.alive(me)
    assert not proctable.alive(proctable.ProcessId(me.pid, me.start_time + 1))  # a reused pid is not it
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert proctable.identify(child.pid) is None
    sleeper = subprocess.Popen(
        ["sleep", "30"], start_new_session=True, env={**os.environ, "DISKCI_T": "mark-1"}
    )
    try:
        found = {p.pid for p in proctable.related(session=None, env_entry="DISKCI_T=mark-1")}
        assert found == {sleeper.pid}
        leader = proctable.identify(sleeper.pid)
        assert leader is not None
        assert {p.pid for p in proctable.related(session=leader, env_entry="DISKCI_T=none")} == {sleeper.pid}
        assert proctable.session_ids()[sleeper.pid] == sleeper.pid
        assert proctable.signal_all({leader}, signal.SIGKILL) == 1
        sleeper.wait(timeout=10)
        assert proctable.signal_all({leader}, signal.SIGKILL) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
