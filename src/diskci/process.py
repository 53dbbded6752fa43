"""The one way diskci runs external programs: argv lists, never a shell, explicit environment,
stdin from /dev/null, output captured (or teed to a log file), failures raised as ToolError."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

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
    """
    args = [os.fspath(a) for a in argv]
    tool = os.path.basename(args[0])
    full_env = tool_env(env)
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
    for sig, wait in ((None, 60.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        if sig is not None:
            popen.send_signal(sig)
        try:
            popen.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    reader.join(timeout=5)


def tool_version(argv: Sequence[str]) -> str:
    """The first line a tool prints for its version flag, or 'unknown'."""
    try:
        proc = subprocess.run(
            list(argv), env=tool_env(), stdin=subprocess.DEVNULL, capture_output=True, check=False
        )
    except OSError:
        return "unknown"
    text = (proc.stdout or proc.stderr).decode(errors="replace").strip()
    return text.splitlines()[0].strip() if text else "unknown"
