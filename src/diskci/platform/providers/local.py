"""The ``local`` compute provider: a CI worker on this machine, in its own directory and process tree.

The worker of NodeInstance N lives in ``<state_dir>/workers/N`` (provider id ``local-N``): the unit
file and EnvironmentFile the ``gitea-runner`` module would install on a real machine
(``runner_unit``), the runner's own state, and ``runner.log``. ``create`` starts the supervisor
(``supervisor``, systemd's stand-in) in a new session, with a clean environment (none of the
platform's secrets; only ``DISKCI_CACHE``, the host's build cache, is passed on through the
EnvironmentFile) marked ``DISKCI_LOCAL_WORKER=<its directory>``, and keeps its pid and start time
in ``supervisor.pid``, so that ``get`` after a platform restart still finds it and a reused pid is
never taken for it. ``destroy`` sends the supervisor SIGTERM (its runner drains and exits), waits,
then SIGKILLs whatever of the tree is left — the session, every process carrying the mark (also
those in sessions of their own, such as act's), and their descendants — and removes the directory.
Every call is idempotent; each worker's calls are serialised by a lock file beside its directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from diskci.atomic import write_text
from diskci.errors import InvalidRequest
from diskci.platform.providers import proctable
from diskci.platform.providers.base import (
    InstanceType,
    MachineState,
    ProviderCatalog,
    ProviderFailed,
    Region,
    RunnerAgent,
    WorkerMachine,
)
from diskci.platform.providers.runner_unit import (
    REVOKED_EXIT_STATUS,
    TOKEN_VARIABLE,
    UNIT_NAME,
    URL_VARIABLE,
    RunnerService,
    render_environment,
    render_unit,
)
from diskci.platform.providers.supervisor import LOG_FILE, SPEC_FILE
from diskci.platform.settings import PlatformSettings
from diskci.platform.statefiles import private_dir, private_file
from diskci.process import tool_env

__all__ = ["MARK_VARIABLE", "LocalProvider"]

MARK_VARIABLE = "DISKCI_LOCAL_WORKER"
WORKERS_DIR = "workers"  # under the platform's state directory
ENV_FILE = "diskci-runner.env"
# What a local worker takes from the platform's environment (into its EnvironmentFile): nothing secret
SHARED_HOST_VARIABLES = ("DISKCI_CACHE",)
PID_FILE = "supervisor.pid"
TAG_FILE = "instance.json"
STOP_TIMEOUT = 30.0  # locally the worker's jobs were cancelled before destroy: no long drain
KILL_TIMEOUT = 10.0
_PROVIDER_ID = re.compile(r"^local-([1-9][0-9]{0,9})$")


def _host_cpus() -> int:
    return os.cpu_count() or 1


def _host_memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // 1024)
    except OSError:
        pass
    return 1024


def _local_type(type_id: str, cpus: int, memory_mib: int) -> InstanceType:
    cpus, memory_mib = min(cpus, _host_cpus()), min(memory_mib, _host_memory_mib())
    return InstanceType(
        id=type_id,
        cpus=cpus,
        memory_mib=memory_mib,
        description=(
            f"a worker on this machine meant to use up to {cpus} CPUs and {memory_mib} MiB (capped at what "
            "the host has); not enforced: local workers share the host with the platform and each other"
        ),
        regions=("local",),
    )


def _local_catalog() -> ProviderCatalog:
    return ProviderCatalog(
        provider="local",
        regions=(Region(id="local", description="this machine (the platform's own host)"),),
        instance_types=(_local_type("local.small", 2, 4096), _local_type("local.large", 8, 16384)),
    )


def instance_of(provider_id: str) -> int:
    """The NodeInstance id in a local provider id (``local-7`` → 7)."""
    match = _PROVIDER_ID.match(provider_id)
    if match is None:
        raise InvalidRequest(f"provider id {provider_id!r} is not a local worker's (local-<instance id>)")
    return int(match.group(1))


class LocalProvider:
    """CI workers as process trees on this machine, under ``workers_dir``."""

    name: ClassVar[str] = "local"
    catalog: ClassVar[ProviderCatalog] = _local_catalog()

    def __init__(
        self, workers_dir: Path, *, python: str = sys.executable, stop_timeout: float = STOP_TIMEOUT
    ) -> None:
        self.workers_dir = workers_dir
        self.python = python
        self.stop_timeout = stop_timeout

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> LocalProvider:
        """Workers under ``settings.state_dir / "workers"``."""
        return cls(settings.state_dir / WORKERS_DIR)

    def directory(self, instance_id: int) -> Path:
        return self.workers_dir / str(instance_id)

    @contextmanager
    def _locked(self, instance_id: int) -> Iterator[Path]:
        private_dir(self.workers_dir)
        fd = os.open(self.workers_dir / f".{instance_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.directory(instance_id)
        finally:
            os.close(fd)

    def _supervisor(self, directory: Path) -> proctable.ProcessId | None:
        """The supervisor the pid file names (it may have exited since)."""
        try:
            record = json.loads((directory / PID_FILE).read_text())
            return proctable.ProcessId(int(record["pid"]), int(record["start_time"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _mark(self, directory: Path) -> str:
        return f"{MARK_VARIABLE}={directory}"

    def processes(self, instance_id: int) -> set[proctable.ProcessId]:
        """Every process of the worker running now (the supervisor's session, the marked, descendants)."""
        directory = self.directory(instance_id)
        return proctable.related(session=self._supervisor(directory), env_entry=self._mark(directory))

    # create / lookup / get / destroy

    def create(self, machine: WorkerMachine) -> str:
        if machine.agent is not RunnerAgent.DISKCI:
            raise InvalidRequest(
                f"provider 'local' runs diskci's runner only, not {machine.agent.value} (the agent of a "
                "Gitea-backed platform's CI worker): use provider ec2"
            )
        provider_id = f"local-{machine.instance_id}"
        with self._locked(machine.instance_id) as directory:
            supervisor = self._supervisor(directory)
            if supervisor is not None and proctable.alive(supervisor):
                return provider_id  # made before: the retried create finds it
            self._write_files(directory, machine, provider_id)
            self._start(directory)
        return provider_id

    def _write_files(self, directory: Path, machine: WorkerMachine, provider_id: str) -> None:
        private_dir(directory)
        env_file = directory / ENV_FILE
        service = RunnerService(
            name=machine.hostname,
            labels=machine.labels,
            state_dir=directory,
            environment_file=env_file,
            python=self.python,
        )
        fd = private_file(env_file)
        with os.fdopen(fd, "w") as out:
            out.truncate()
            values = {TOKEN_VARIABLE: machine.registration_token, URL_VARIABLE: machine.registration_url}
            # the host's build cache, when the platform names one: every local worker shares it
            values.update({k: os.environ[k] for k in SHARED_HOST_VARIABLES if os.environ.get(k)})
            out.write(render_environment(values))
        description = f"diskci CI worker runner ({machine.hostname}, NodeInstance {machine.instance_id})"
        write_text(directory / UNIT_NAME, render_unit(service, description=description))
        tag = {
            "instance_id": machine.instance_id,
            "provider_id": provider_id,
            "hostname": machine.hostname,
            "region": machine.region,
            "instance_type": machine.instance_type,
            "labels": list(machine.labels),
        }
        write_text(directory / TAG_FILE, json.dumps(tag, indent=2) + "\n")
        spec = {
            "instance_id": machine.instance_id,
            "environment_file": str(env_file),
            "commands": [
                {"name": "register", "argv": service.register_command},
                {"name": "run", "argv": service.run_command},
            ],
            "restart_prevent_exit_status": [REVOKED_EXIT_STATUS],
            "stop_timeout": self.stop_timeout,
        }
        write_text(directory / SPEC_FILE, json.dumps(spec, indent=2) + "\n")

    def _start(self, directory: Path) -> None:
        env = tool_env({MARK_VARIABLE: str(directory)})  # a clean environment: no platform secrets
        with (directory / LOG_FILE).open("ab") as log:
            child = subprocess.Popen(
                [self.python, "-m", "diskci.platform.providers.supervisor", str(directory)],
                env=env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # reap it when it exits while this process lives (after a platform restart init does)
        threading.Thread(target=child.wait, name=f"reap-worker-{child.pid}", daemon=True).start()
        process = proctable.identify(child.pid)
        if process is None:
            raise ProviderFailed(f"the supervisor of {directory} exited at once; see {directory / LOG_FILE}")
        record = {"pid": process.pid, "start_time": process.start_time}
        write_text(directory / PID_FILE, json.dumps(record) + "\n")

    def lookup(self, instance_id: int) -> str | None:
        return f"local-{instance_id}" if self.directory(instance_id).is_dir() else None

    def get(self, provider_id: str) -> MachineState:
        directory = self.directory(instance_of(provider_id))
        if not directory.is_dir():
            return MachineState.GONE
        supervisor = self._supervisor(directory)
        if supervisor is None:
            return MachineState.PENDING
        return MachineState.RUNNING if proctable.alive(supervisor) else MachineState.STOPPED

    def destroy(self, provider_id: str) -> None:
        instance_id = instance_of(provider_id)
        with self._locked(instance_id) as directory:
            if not directory.exists():
                return
            supervisor = self._supervisor(directory)
            if supervisor is not None and proctable.alive(supervisor):
                proctable.signal_all({supervisor}, signal.SIGTERM)  # it passes SIGTERM to the runner
            else:  # the supervisor died: its runner, if any, gets SIGTERM itself
                proctable.signal_all(self.processes(instance_id), signal.SIGTERM)
            if not self._wait_gone(instance_id, self.stop_timeout + 5):
                proctable.signal_all(self.processes(instance_id), signal.SIGKILL)
                if not self._wait_gone(instance_id, KILL_TIMEOUT):
                    left = sorted(p.pid for p in self.processes(instance_id))
                    raise ProviderFailed(f"worker {provider_id}: processes {left} outlived SIGKILL")
            shutil.rmtree(directory)

    def _wait_gone(self, instance_id: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.processes(instance_id):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True
