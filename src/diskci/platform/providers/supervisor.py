"""The local provider's stand-in for systemd: runs one worker's runner as ``diskci-runner.service``
says, in the worker's own session, and keeps it running.

``python -m diskci.platform.providers.supervisor DIR`` reads ``DIR/supervisor.json`` (written by
``local.LocalProvider``) and the EnvironmentFile it names, then, like ``Restart=on-failure``: runs
the ExecStartPre command (register), then the ExecStart command (run); when either fails it starts
again after a back-off (1 s, doubling up to a minute; reset once the runner has run a minute), except
after exit status 3 (``RestartPreventExitStatus``: the platform revoked the runner) or a clean exit.
SIGTERM (``KillSignal``) is passed to the running command, which gets ``stop_timeout`` seconds before
SIGKILL; nothing is restarted after it. Output goes to ``DIR/runner.log``; what it is doing to
``DIR/supervisor-state.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from diskci.atomic import write_text
from diskci.platform.providers.runner_unit import expand, parse_environment

SPEC_FILE = "supervisor.json"
STATE_FILE = "supervisor-state.json"
LOG_FILE = "runner.log"
INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 60.0
HEALTHY_AFTER = 60.0  # a runner that ran this long has its back-off reset


class Supervisor:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.spec: dict[str, Any] = json.loads((directory / SPEC_FILE).read_text())
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.log: IO[bytes] = (directory / LOG_FILE).open("ab")

    def say(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.log.write(f"{stamp} supervisor: {message}\n".encode())
        self.log.flush()

    def state(self, state: str, **details: Any) -> None:
        record = {"state": state, "restarts": self.restarts, "pid": os.getpid(), **details}
        record["updated_at"] = datetime.now(UTC).isoformat()
        write_text(self.directory / STATE_FILE, json.dumps(record, indent=2) + "\n")

    def on_sigterm(self, _signum: int, _frame: object) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def environment(self) -> dict[str, str]:
        values = parse_environment(Path(self.spec["environment_file"]).read_text())
        return {**os.environ, **values}

    def execute(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Run one command to its end (or until SIGTERM plus ``stop_timeout``); its exit status."""
        self.child = subprocess.Popen(
            argv,
            env=env,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if self.stopping.is_set():  # SIGTERM came while it was being started
            self.child.send_signal(signal.SIGTERM)
        child = self.child
        while True:
            try:
                status = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.stopping.is_set():
                    try:
                        status = child.wait(timeout=float(self.spec.get("stop_timeout", 30)))
                        break
                    except subprocess.TimeoutExpired:
                        self.say(f"{name} outlived its stop timeout: SIGKILL")
                        child.kill()
                        status = child.wait()
                        break
        self.child = None
        return status

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        prevent = set(self.spec.get("restart_prevent_exit_status", [3]))
        commands: list[dict[str, Any]] = self.spec["commands"]  # [{"name": "register", "argv": [...]}, ...]
        backoff = INITIAL_BACKOFF
        while not self.stopping.is_set():
            env = self.environment()
            started = time.monotonic()
            status = 0
            for command in commands:
                name = str(command["name"])
                self.state("running", command=name)
                self.say(f"starting {name}")
                status = self.execute(name, expand(command["argv"], env), env)
                self.say(f"{name} exited with status {status}")
                if status != 0 or self.stopping.is_set():
                    break
            if self.stopping.is_set():
                self.state("stopped", reason="terminated", last_exit_status=status)
                return 0
            if status == 0:
                self.state("stopped", reason="exited", last_exit_status=0)
                return 0
            if status in prevent:
                self.state("stopped", reason="revoked", last_exit_status=status)
                self.say(f"exit status {status}: the platform refused the runner; not restarting")
                return 0
            if time.monotonic() - started >= HEALTHY_AFTER:
                backoff = INITIAL_BACKOFF
            self.restarts += 1
            self.state("backoff", last_exit_status=status, restart_in=backoff)
            self.say(f"restarting in {backoff:g} s")
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        self.state("stopped", reason="terminated")
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m diskci.platform.providers.supervisor WORKER_DIR", file=sys.stderr)
        return 2
    return Supervisor(Path(argv[0])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
