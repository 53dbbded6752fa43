"""A real ``diskci platform serve`` for the integration tests: its environment, the process started on a
free port and awaited on ``/healthz``, stopped when the block ends, and an admin token in its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loopback import free_port

from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import Role
from diskci.platform.db.session import Database
from polling import http_ok, wait_until


def serve_env(state: Path, secret_key: str, *, queue_in_state: bool = True) -> dict[str, str]:
    """This process's environment for a platform in ``state`` (SQLite, never ``DISKCI_DATABASE_URL``);
    the queue in ``state/queue.db``, or with ``queue_in_state=False`` wherever the platform defaults to."""
    env = {**os.environ, "DISKCI_STATE_DIR": str(state), "DISKCI_SECRET_KEY": secret_key}
    if queue_in_state:
        env["DISKCI_QUEUE_URL"] = f"sqlite:///{state / 'queue.db'}"
    else:
        env.pop("DISKCI_QUEUE_URL", None)
    env.pop("DISKCI_DATABASE_URL", None)
    return env


@dataclass
class ServedPlatform:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    returncode: int | None = None
    """The exit status once stopped; None if it had to be killed."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def platform_serve(
    env: dict[str, str],
    log_path: Path,
    *,
    consumer: bool = True,
    what: str = "serve to come up",
    stop_signal: int = signal.SIGINT,
    stop_timeout: float = 20,
) -> Iterator[ServedPlatform]:
    """``diskci platform serve`` on a free port with ``env``, output to ``log_path``, up within 30 s.
    At the end it gets ``stop_signal`` and ``stop_timeout`` seconds to exit before it is killed."""
    port = free_port()
    argv = [sys.executable, "-m", "diskci.cli.main", "platform", "serve", "--port", str(port)]
    if not consumer:
        argv.append("--no-consumer")
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    served = ServedPlatform(port, proc, log_path)
    try:

        def serving() -> bool:
            if http_ok(f"{served.base}/healthz"):
                return True
            assert proc.poll() is None, log_path.read_text()
            return False

        wait_until(serving, 30, what=what, detail=log_path.read_text)
        yield served
    finally:
        proc.send_signal(stop_signal)
        try:
            served.returncode = proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def admin_token(state: Path, name: str = "root") -> str:
    """A new admin API token in the (already migrated) platform database of ``state``."""
    db = Database(f"sqlite:///{state / 'platform.db'}")
    try:
        with db.session() as s:
            return create_token(s, name, Role.ADMIN, actor="test").token
    finally:
        db.dispose()
