"""The one way diskci runs external programs: argv lists, never a shell, explicit environment,
stdin from /dev/null, output captured (or teed to a log file), failures raised as ToolError.

``run(argv)`` runs a tool to its end; ``with spawn(argv) as child:`` starts a long-lived child (QEMU, a
server) that is stopped when the block ends. Both stop a child the one way, ``stop_process``: wait,
SIGTERM, wait, SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from diskci.errors import ResourceError, ToolError

log = logging.getLogger(__name__)

BASE_ENV = {
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TZ": "UTC",
}


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean, explicit environment for a tool (HOME and TMPDIR kept from ours)."""
    env = dict(BASE_ENV)
    for key in ("HOME", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    if extra:
        env.update(extra)
    return env


def child_env(extra: Mapping[str, str] | None = None, *, inherit: bool = False) -> dict[str, str]:
    """The environment of a child: the clean tool environment, or (``inherit``) all of ours, for
    diskci's own children, which read their ``DISKCI_*`` settings from it; ``extra`` on top."""
    if not inherit:
        return tool_env(extra)
    return {**os.environ, **(extra or {})}


def require_tool(name: str, package: str) -> str:
    """The path of ``name``, or a ResourceError naming the Debian package that provides it."""
    path = shutil.which(name, path=BASE_ENV["PATH"] + ":" + os.environ.get("PATH", ""))
    if path is None:
        raise ResourceError(
            f"{name} is not installed",
            hint=f"Install the Debian package '{package}' (make setup installs everything diskci needs).",
        )
    return path


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | None = None,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    tail_lines: int = 40,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return its completed process (stdout captured as bytes).

    With ``log_file`` or ``on_line``, stderr and stdout are merged and streamed line by line into the
    log (and the callback), which is how long-running tools such as mmdebstrap report progress.
    On failure a ToolError carries the command and the last ``tail_lines`` lines of its output.
    ``env`` is added to the clean tool environment, or to ours with ``inherit_env`` (see ``child_env``).
    """
    args = [os.fspath(a) for a in argv]
    tool = os.path.basename(args[0])
    full_env = child_env(env, inherit=inherit_env)
    log.debug("run: %s", shlex.join(args))
    if log_file is None and on_line is None:
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if check and proc.returncode != 0:
            text = (proc.stderr or proc.stdout or b"").decode(errors="replace")
            raise ToolError(tool, args, proc.returncode, "\n".join(text.splitlines()[-tail_lines:]))
        return proc

    tail: deque[str] = deque(maxlen=tail_lines)
    out = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115
    try:
        with subprocess.Popen(
            args,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as popen:
            assert popen.stdout is not None
            try:
                for raw in popen.stdout:
                    if out is not None:
                        out.write(raw)
                        out.flush()
                    line = raw.decode(errors="replace").rstrip("\n")
                    tail.append(line)
                    if on_line is not None:
                        on_line(line)
            except KeyboardInterrupt:
                _let_it_clean_up(popen, out)
                raise
            returncode = popen.wait()
    finally:
        if out is not None:
            out.close()
    if check and returncode != 0:
        raise ToolError(tool, args, returncode, "\n".join(tail))
    return subprocess.CompletedProcess(args, returncode, b"", b"")


def _let_it_clean_up(popen: subprocess.Popen[bytes], out: IO[bytes] | None) -> None:
    """After ^C the tool (in our process group) got SIGINT too. Keep reading its output while it
    cleans up (mmdebstrap unmounts its chroot), or it dies of SIGPIPE half-way; stop it if it lingers."""
    assert popen.stdout is not None
    stdout = popen.stdout

    def drain() -> None:
        for raw in stdout:
            if out is not None:
                out.write(raw)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stop_process(popen, grace=60.0, term_wait=30.0, kill_wait=10.0)
    reader.join(timeout=5)


def stop_process(
    popen: subprocess.Popen[Any],
    *,
    grace: float = 0.0,
    term_wait: float = 10.0,
    kill_wait: float | None = None,
) -> int | None:
    """The one terminate→kill ladder: give the child ``grace`` seconds to exit by itself, then SIGTERM
    and ``term_wait`` seconds, then SIGKILL and ``kill_wait`` seconds (None: as long as it takes).
    Returns its exit status, or None if it outlived the ladder."""
    for sig, wait in ((None, grace), (signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        if popen.poll() is not None:
            return popen.returncode
        if sig is None and not wait:
            continue
        if sig is not None:
            popen.send_signal(sig)
        try:
            return popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return popen.poll()


class Child:
    """A long-lived child started by ``spawn``: its stdout (merged with stderr) when not sent to a log."""

    def __init__(
        self, argv: list[str], popen: subprocess.Popen[bytes], *, term_wait: float, kill_wait: float | None
    ) -> None:
        self.argv = argv
        self.pid = popen.pid
        self.stdout: IO[bytes] | None = popen.stdout
        self._popen = popen
        self._term_wait = term_wait
        self._kill_wait = kill_wait

    def poll(self) -> int | None:
        """Its exit status, or None while it runs."""
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: for ever) for it to exit; its status, or None."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)

    def terminate(self) -> int | None:
        """Stop it (``stop_process``: SIGTERM, then SIGKILL); a no-op once it has exited."""
        return stop_process(self._popen, term_wait=self._term_wait, kill_wait=self._kill_wait)


@contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    log_file: Path | None = None,
    term_wait: float = 10.0,
    kill_wait: float | None = None,
) -> Iterator[Child]:
    """Start ``argv`` as a long-lived child, stopped with ``Child.terminate`` when the block ends.

    The environment is ``run``'s (``child_env``), stdin is /dev/null, and stderr is merged into
    stdout, which is appended to ``log_file`` or else readable as ``child.stdout`` (read it, or the
    child blocks once the pipe is full).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("spawn: %s", shlex.join(args))
    out = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            args,
            env=child_env(env, inherit=inherit_env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out if out is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    finally:
        if out is not None:
            out.close()
    child = Child(args, popen, term_wait=term_wait, kill_wait=kill_wait)
    try:
        yield child
    finally:
        child.terminate()
        if popen.stdout is not None:
            popen.stdout.close()


def tool_version(argv: Sequence[str]) -> str:
    """The first line a tool prints for its version flag, or 'unknown'."""
    try:
        proc = run(argv, check=False)
    except OSError:
        return "unknown"
    text = (proc.stdout or proc.stderr).decode(errors="replace").strip()
    return text.splitlines()[0].strip() if text else "unknown"
