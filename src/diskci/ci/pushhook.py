"""Push events of a plain bare git repository: the ``post-receive`` hook that posts them to the platform.

Public API: ``install_hook(bare_repo, *, url, platform, secret_file) -> Path``,
``post_receive(lines, *, url, platform, secret, repository) -> list[Posted]``, ``push_event(...)``,
``push_signature(secret, body)`` and the signature header names the platform checks.

``install_hook`` writes ``hooks/post-receive`` into a bare repository: a two-line ``sh`` script that runs
``<this python> -m diskci.cli.main ci post-receive`` with absolute paths (the secret stays in its 0600
file, named by the hook, never written into it). For each line git gives the hook on stdin,
``<old> <new> <ref>``, ``post_receive`` posts one push event in Gitea's format, signed with
``X-Gitea-Signature`` (hex HMAC-SHA256 of the body), to ``<url>/api/v1/ci/push/<platform>``; the
platform's answer (the run id, or why the push was ignored) is what the hook prints, which git shows
the pusher as ``remote:`` lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
import stat
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskci.atomic import write_text
from diskci.errors import UsageError
from diskci.process import require_tool, run

__all__ = [
    "HOOK_MARKER",
    "PUSH_ROUTE",
    "SIGNATURE_HEADER",
    "Posted",
    "install_hook",
    "post_receive",
    "push_event",
    "push_signature",
    "read_secret_file",
]

PUSH_ROUTE = "/api/v1/ci/push/{platform}"
SIGNATURE_HEADER = "X-Gitea-Signature"
HOOK_MARKER = "# installed by diskci ci hook"
ZERO_SHA = "0" * 40
POST_TIMEOUT = 120.0  # the platform may fetch the repository before it answers


def push_signature(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret`` (Gitea's and Forgejo's push signature)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def read_secret_file(path: Path) -> str:
    """The secret in ``path``, which must be a regular file only its owner can read."""
    try:
        info = path.stat()
    except OSError as exc:
        raise UsageError(f"secret file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"secret file {path}: not a regular file")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise UsageError(
            f"secret file {path} has mode {stat.S_IMODE(info.st_mode):04o}: only its owner may read it",
            hint=f"Run: chmod 600 {path}",
        )
    secret = path.read_text().strip()
    if not secret:
        raise UsageError(f"secret file {path} is empty")
    return secret


def _bare(repo: Path) -> Path:
    if not repo.is_dir():
        raise UsageError(f"{repo}: no such directory")
    git = require_tool("git", "git")
    result = run([git, "--git-dir", str(repo), "rev-parse", "--is-bare-repository"], check=False)
    if result.returncode != 0 or result.stdout.decode().strip() != "true":
        raise UsageError(
            f"{repo}: not a bare git repository",
            hint=f"Make one: git init --bare {repo}  (or git clone --bare SOURCE {repo})",
        )
    return repo.resolve()


def install_hook(
    bare_repo: Path,
    *,
    url: str,
    platform: str,
    secret_file: Path,
    python: str | None = None,
    force: bool = False,
) -> Path:
    """Write the ``post-receive`` hook into ``bare_repo``; returns its path.

    A hook that diskci did not install is left alone unless ``force``.
    """
    repo = _bare(Path(bare_repo))
    if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        raise UsageError(f"--url {url!r}: the platform's http(s) base URL, e.g. http://127.0.0.1:8480")
    if not platform or "/" in platform or any(c.isspace() for c in platform):
        raise UsageError(f"--platform {platform!r}: a node platform name")
    secret_path = Path(secret_file).resolve()
    read_secret_file(secret_path)  # refused now rather than at the first push
    hook = repo / "hooks" / "post-receive"
    if hook.exists() and HOOK_MARKER not in hook.read_text(errors="replace") and not force:
        raise UsageError(f"{hook} exists and was not installed by diskci", hint="Add --force to replace it.")
    argv = [
        python or sys.executable, "-m", "diskci.cli.main", "ci", "post-receive",
        "--url", url.rstrip("/"), "--platform", platform,
        "--secret-file", str(secret_path), "--repository", str(repo),
    ]  # fmt: skip
    text = f"#!/bin/sh\n{HOOK_MARKER}: posts each pushed ref to the platform\nexec {shlex.join(argv)}\n"
    hook.parent.mkdir(exist_ok=True)
    write_text(hook, text)
    os.chmod(hook, 0o755)
    return hook


def push_event(old: str, new: str, ref: str, *, repository: Path, pusher: str) -> dict[str, Any]:
    """A push event as Gitea sends it (the fields the platform reads, and the usual companions)."""
    name = repository.name.removesuffix(".git")
    user = {"login": pusher, "username": pusher}
    return {
        "ref": ref,
        "before": old,
        "after": new,
        "compare_url": "",
        "commits": [],
        "total_commits": 0,
        "head_commit": None if set(new) == {"0"} else {"id": new},
        "repository": {
            "name": name,
            "full_name": name,
            "clone_url": str(repository),
            "html_url": "",
        },
        "pusher": user,
        "sender": user,
    }


@dataclass(frozen=True)
class Posted:
    """What the platform answered for one pushed ref."""

    ref: str
    status_code: int
    answer: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status_code < 300

    def line(self) -> str:
        a = self.answer
        if "run_id" in a:
            again = " (already made for this commit: the same run)" if a.get("duplicate") else ""
            return f"diskci: {self.ref}: CI run {a['run_id']} {a.get('status', '')}{again}".rstrip()
        if "ignored" in a:
            return f"diskci: {self.ref}: ignored: {a['ignored']}"
        return f"diskci: {self.ref}: refused ({self.status_code} {a.get('error', '')}): {a.get('detail', a)}"


def _pusher() -> str:
    for key in ("GITEA_PUSHER_NAME", "GL_USERNAME", "USER", "LOGNAME"):
        if os.environ.get(key):
            return os.environ[key]
    return "git"


def post_receive(
    lines: Iterable[str], *, url: str, platform: str, secret: str, repository: Path
) -> list[Posted]:
    """Post one signed push event for each ``<old> <new> <ref>`` line; the platform's answers."""
    import httpx

    target = url.rstrip("/") + PUSH_ROUTE.format(platform=platform)
    posted: list[Posted] = []
    with httpx.Client(timeout=POST_TIMEOUT) as client:
        for line in lines:
            parts = line.split()
            if len(parts) != 3:
                continue
            old, new, ref = parts
            body = json.dumps(push_event(old, new, ref, repository=repository, pusher=_pusher())).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Gitea-Event": "push",
                "X-Gitea-Delivery": str(uuid.uuid4()),
                SIGNATURE_HEADER: push_signature(secret, body),
            }
            try:
                response = client.post(target, content=body, headers=headers)
            except httpx.HTTPError as exc:
                posted.append(Posted(ref, 0, {"error": type(exc).__name__, "detail": f"{target}: {exc}"}))
                continue
            try:
                answer = response.json()
            except ValueError:
                answer = {"detail": response.text[:500]}
            posted.append(Posted(ref, response.status_code, answer if isinstance(answer, dict) else {}))
    return posted
