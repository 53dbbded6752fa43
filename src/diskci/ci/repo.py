"""Create a platform's image-build repository: a git repository holding the spec and its workflow.

Public API: ``init_repo(directory, spec_file) -> ImageRepo``.

Layout: ``platforms/<name>.yaml`` (the spec, byte for byte) and ``.gitea/workflows/build.yaml``
(``diskci.ci.workflow``), in one first commit on ``main``. ``directory`` must not exist or be empty;
the repository is made beside it and renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diskci.atomic import atomic_path
from diskci.ci.workflow import WORKFLOW_PATH, render, workflow
from diskci.errors import UsageError
from diskci.process import require_tool, run
from diskci.spec import load_spec

__all__ = ["ImageRepo", "init_repo", "spec_path"]

BRANCH = "main"
# used only when git has no identity configured (a fresh CI worker, a container)
_FALLBACK_IDENTITY = ("-c", "user.name=diskci", "-c", "user.email=diskci@localhost")


@dataclass(frozen=True)
class ImageRepo:
    directory: Path
    platform: str
    spec: str
    workflow: str
    branch: str
    commit: str


def spec_path(name: str) -> str:
    """Where a platform's spec lives in its image-build repository."""
    return f"platforms/{name}.yaml"


def _git(git: str, directory: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run([git, "-C", str(directory), *args], env=env).stdout.decode().strip()


def _has_identity(git: str, directory: Path) -> bool:
    result = run([git, "-C", str(directory), "config", "user.email"], check=False)
    return result.returncode == 0 and bool(result.stdout.strip())


def init_repo(
    directory: Path, spec_file: Path, *, message: str | None = None, commit_time: int | None = None
) -> ImageRepo:
    """A new git repository at ``directory`` with ``spec_file`` and its workflow, committed once
    (at ``commit_time``, seconds since the epoch, when given: the builds' SOURCE_DATE_EPOCH)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()):
        raise UsageError(
            f"{directory}: is not empty; an image-build repository starts in a new or empty directory",
            hint=f"to update an existing one: diskci ci workflow SPEC --out {directory}/{WORKFLOW_PATH}",
        )
    spec = load_spec(spec_file)  # an invalid spec fails here, before anything is made
    git = require_tool("git", "git")
    rel_spec = spec_path(spec.name)
    with atomic_path(directory, directory=True) as tmp:
        (tmp / rel_spec).parent.mkdir(parents=True)
        (tmp / rel_spec).write_bytes(Path(spec_file).read_bytes())
        (tmp / WORKFLOW_PATH).parent.mkdir(parents=True)
        (tmp / WORKFLOW_PATH).write_text(render(workflow(spec, rel_spec), source=rel_spec))
        _git(git, tmp, "init", "--quiet", "--initial-branch", BRANCH)
        _git(git, tmp, "add", rel_spec, WORKFLOW_PATH)
        identity = () if _has_identity(git, tmp) else _FALLBACK_IDENTITY
        text = message or f"{spec.name}: platform spec and build workflow (diskci ci init-repo)"
        dates = () if commit_time is None else (f"--date=@{commit_time}",)
        env = None if commit_time is None else {"GIT_COMMITTER_DATE": f"@{commit_time} +0000"}
        _git(git, tmp, *identity, "commit", "--quiet", *dates, "-m", text, env=env)
        commit = _git(git, tmp, "rev-parse", "HEAD")
    return ImageRepo(
        directory=directory,
        platform=spec.name,
        spec=rel_spec,
        workflow=WORKFLOW_PATH,
        branch=BRANCH,
        commit=commit,
    )
