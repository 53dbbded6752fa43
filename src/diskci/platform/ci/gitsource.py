"""A platform's image-build repository as the platform reads it: refs resolved to commits, files read at
a commit, through a bare mirror kept under the state directory.

``GitSource(cache_root, url)`` keeps one bare mirror per repository URL at
``<cache_root>/<sha256(url)[:24]>.git`` (``settings.state_dir / "git"``), made and fetched on demand
(every branch and tag, forced and pruned) under an exclusive lock on a file beside it, so concurrent
requests and processes never fetch into one mirror at once. ``resolve(ref)`` turns a tag name, a
branch name, a full ``refs/...`` name or a commit sha into a ``ResolvedRef`` (a name is looked up after
a fetch, since tags and branches move; a sha only fetches when the mirror lacks it); a ref the
repository does not have is ``UnknownRef``, naming the ref and the repository. ``read_file(sha, path)``
returns a file's text at that commit (``WorkflowNotFound`` when it is not there).
``check_repository(url)`` is the configuration-time check: ``git ls-remote`` must list the repository.

Git runs as an argument list, never through a shell, with a deadline (``GIT_TIMEOUT``), bounded output,
no terminal prompt, and only the transports a repository URL may name (``ALLOWED_PROTOCOLS``): a URL
or ref that could be read as an option, or a transport such as ``ext::`` that runs commands, is refused
before git sees it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from diskci.errors import InvalidRequest, NotFound, PlatformError
from diskci.process import require_tool, tool_env

__all__ = [
    "ALLOWED_PROTOCOLS",
    "GIT_TIMEOUT",
    "GitSource",
    "RepositoryUnavailable",
    "ResolvedRef",
    "UnknownRef",
    "UnreadableRepository",
    "WorkflowNotFound",
    "check_repository",
    "check_repository_url",
]

GIT_TIMEOUT = 60.0  # seconds: a fetch of a large repository over a slow link
LS_REMOTE_TIMEOUT = 20.0
MAX_OUTPUT = 4 * 1024 * 1024  # bytes of a git command's stdout (ref lists, a file)
MAX_FILE = 1024 * 1024  # a file read at a commit (the workflow)
MAX_ERROR = 16 * 1024
ALLOWED_PROTOCOLS = ("file", "http", "https", "ssh", "git")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,64}$")
# What a ref may be: git's ref-name rules, stricter (no leading '-', no '..', '@{', spaces or globs).
_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9._/+@=-]{1,255}(?<![./])$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^:]")
_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://[^\s]+$")


class UnknownRef(NotFound):
    """A ref (tag, branch or commit) that is not in the platform's image-build repository."""


class UnreadableRepository(InvalidRequest):
    """A repository URL git cannot read (or may not be given): why, with git's words."""


class WorkflowNotFound(NotFound):
    """The commit has no such file (the workflow is not where the platform reads it)."""


class RepositoryUnavailable(PlatformError):
    """Git could not fetch from or read a configured repository now (unreachable, timed out)."""

    http_status = 503


@dataclass(frozen=True)
class ResolvedRef:
    """A ref as a run records it: ``ref`` the full name (``refs/tags/v1``; a sha for a bare commit)."""

    ref: str
    sha: str


def check_repository_url(url: str) -> str:
    """``url`` when it is an absolute path, an scp-like ``user@host:path`` or a URL of an allowed
    transport; else ``UnreadableRepository``."""
    if not url or len(url) > 1024 or url != url.strip() or any(c in url for c in "\0\n\r"):
        raise UnreadableRepository(f"repository {url[:200]!r}: not a git URL or an absolute path")
    if url.startswith("/"):
        return url
    match = _URL.match(url)
    if match:
        if match["scheme"] not in ALLOWED_PROTOCOLS:
            raise UnreadableRepository(
                f"repository {url[:200]!r}: transport {match['scheme']!r} is not allowed"
                f" (use {', '.join(ALLOWED_PROTOCOLS)} or an absolute path)"
            )
        return url
    if _SCP_LIKE.match(url):
        return url
    raise UnreadableRepository(
        f"repository {url[:200]!r}: not a git URL (https://..., ssh://..., user@host:path)"
        " nor an absolute path"
    )


def _env() -> dict[str, str]:
    return tool_env(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROTOCOL_FROM_USER": "1",
            "GIT_ALLOW_PROTOCOL": ":".join(ALLOWED_PROTOCOLS),
        }
    )


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: bytes
    stderr: str


def _git(args: Sequence[str], *, timeout: float = GIT_TIMEOUT, limit: int = MAX_OUTPUT) -> _Result:
    """Run git with ``args`` (stdin closed), at most ``timeout`` seconds and ``limit`` bytes of stdout."""
    argv = [require_tool("git", "git"), *args]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    assert proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    err: list[bytes] = []
    stdout, stderr = proc.stdout, proc.stderr

    def read_out() -> None:
        out.append(stdout.read(limit + 1))
        stdout.read()  # drain what is over the limit, so git is not blocked writing it

    def read_err() -> None:
        err.append(stderr.read(MAX_ERROR))
        stderr.read()

    readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RepositoryUnavailable(f"git {args[0]} did not finish within {timeout:g} s") from None
    finally:
        for reader in readers:
            reader.join(timeout=5)
        stdout.close()
        stderr.close()
    data = b"".join(out)
    if len(data) > limit:
        raise RepositoryUnavailable(f"git {args[0]} wrote more than {limit} bytes")
    return _Result(returncode, data, b"".join(err).decode(errors="replace").strip())


def _last_words(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "; ".join(lines[-3:]) or "no message"


def check_repository(url: str, *, timeout: float = LS_REMOTE_TIMEOUT) -> None:
    """Refuse, with git's reason, a repository ``git ls-remote`` cannot list."""
    check_repository_url(url)
    try:
        result = _git(["ls-remote", "--quiet", "--", url, "HEAD"], timeout=timeout)
    except RepositoryUnavailable as exc:
        raise UnreadableRepository(f"repository {url!r} is not readable: {exc.message}") from exc
    if result.returncode != 0:
        raise UnreadableRepository(
            f"repository {url!r} is not a readable git repository: {_last_words(result.stderr)}"
        )


class GitSource:
    """One repository, read through its bare mirror under ``cache_root`` (see the module)."""

    def __init__(self, cache_root: Path, url: str) -> None:
        self.url = check_repository_url(url)
        self.cache_root = Path(cache_root)
        self.mirror = self.cache_root / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")

    # --- the mirror ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.cache_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.mirror.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: excludes other threads and processes alike
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _in_mirror(self, *args: str, limit: int = MAX_OUTPUT) -> _Result:
        return _git(["--git-dir", str(self.mirror), *args], limit=limit)

    def _fetch(self) -> None:
        """Make the mirror when it is missing, then fetch every branch and tag (call with the lock)."""
        if not (self.mirror / "HEAD").is_file():
            shutil.rmtree(self.mirror, ignore_errors=True)  # a half-made one of a crashed process
            made = _git(["init", "--quiet", "--bare", str(self.mirror)])
            if made.returncode != 0:
                raise RepositoryUnavailable(f"cannot create the mirror {self.mirror}: {made.stderr}")
        fetched = self._in_mirror(
            "fetch", "--quiet", "--force", "--prune", "--no-tags", "--", self.url,
            "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
        )  # fmt: skip
        if fetched.returncode != 0:
            raise RepositoryUnavailable(
                f"cannot fetch from repository {self.url!r}: {_last_words(fetched.stderr)}"
            )

    def _commit(self, name: str) -> str | None:
        """The commit ``name`` (a full ref or a sha) names in the mirror, or None."""
        if not (self.mirror / "HEAD").is_file():
            return None
        found = self._in_mirror("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
        sha = found.stdout.decode().strip()
        return sha if found.returncode == 0 and _SHA.match(sha) else None

    def _lookup(self, ref: str) -> ResolvedRef | None:
        candidates = [ref] if ref.startswith("refs/") else [f"refs/tags/{ref}", f"refs/heads/{ref}"]
        for name in candidates:
            sha = self._commit(name)
            if sha is not None:
                return ResolvedRef(ref=name, sha=sha)
        if _SHORT_SHA.match(ref):
            sha = self._commit(ref)
            if sha is not None:
                return ResolvedRef(ref=sha, sha=sha)
        return None

    # --- public -------------------------------------------------------------------------------------

    def resolve(self, ref: str) -> ResolvedRef:
        """The commit ``ref`` names now: a tag, a branch, ``refs/...`` or a (possibly short) sha."""
        if not _REF.match(ref):
            raise UnknownRef(f"{ref[:100]!r} is not a ref name or a commit sha")
        with self._locked():
            if _SHA.match(ref):
                sha = self._commit(ref)
                if sha is None:
                    self._fetch()
                    sha = self._commit(ref)
                if sha is not None:
                    return ResolvedRef(ref=sha, sha=sha)
            else:
                self._fetch()  # tags and branches move: look them up as the repository has them now
                found = self._lookup(ref)
                if found is not None:
                    return found
        raise UnknownRef(f"ref {ref!r} is not in the repository {self.url}")

    def read_file(self, sha: str, path: str) -> str:
        """The text of ``path`` at commit ``sha`` (which ``resolve`` returned)."""
        if not _SHA.match(sha):
            raise UnknownRef(f"{sha[:100]!r} is not a commit sha")
        if path.startswith(("/", "-")) or ".." in path.split("/"):
            raise WorkflowNotFound(f"{path!r} is not a path inside the repository")
        with self._locked():
            if self._commit(sha) is None:
                self._fetch()
                if self._commit(sha) is None:
                    raise UnknownRef(f"commit {sha} is not in the repository {self.url}")
            size = self._in_mirror("cat-file", "-s", f"{sha}:{path}")
            if size.returncode != 0:
                raise WorkflowNotFound(f"the repository {self.url} has no {path} at commit {sha[:12]}")
            if int(size.stdout.decode().strip() or 0) > MAX_FILE:
                raise WorkflowNotFound(f"{path} at commit {sha[:12]} is larger than {MAX_FILE} bytes")
            blob = self._in_mirror("cat-file", "blob", f"{sha}:{path}", limit=MAX_FILE)
        if blob.returncode != 0:
            raise WorkflowNotFound(f"the repository {self.url} has no {path} at commit {sha[:12]}")
        try:
            return blob.stdout.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WorkflowNotFound(f"{path} at commit {sha[:12]} is not UTF-8 text") from exc
