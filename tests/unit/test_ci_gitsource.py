"""Reading a platform's image-build repository: refs resolved to commits through a bare mirror fetched on
demand, files read at a commit, unknown refs and unreadable repositories refused by name."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from diskci.platform.ci.gitsource import (
    GitSource,
    UnknownRef,
    UnreadableRepository,
    WorkflowNotFound,
    check_repository,
    check_repository_url,
)

IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *IDENTITY, *args], check=True, capture_output=True)
    return out.stdout.decode().strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on main with a workflow, tagged v1, and a branch ``next`` one commit ahead."""
    path = tmp_path / "images"
    path.mkdir()
    _git(path, "init", "--quiet", "--initial-branch", "main")
    (path / ".gitea/workflows").mkdir(parents=True)
    (path / ".gitea/workflows/build.yaml").write_text("name: one\n")
    _git(path, "add", ".")
    _git(path, "commit", "--quiet", "-m", "one")
    _git(path, "tag", "v1")
    _git(path, "checkout", "--quiet", "-b", "next")
    (path / ".gitea/workflows/build.yaml").write_text("name: two\n")
    _git(path, "commit", "--quiet", "-am", "two")
    _git(path, "checkout", "--quiet", "main")
    return path


def test_tags_branches_full_refs_and_shas_resolve_to_their_commits(repo: Path, tmp_path: Path) -> None:
    source = GitSource(tmp_path / "cache", str(repo))
    v1 = _git(repo, "rev-parse", "v1")
    nxt = _git(repo, "rev-parse", "next")
    assert source.resolve("v1") == source.resolve("refs/tags/v1")
    assert (source.resolve("v1").ref, source.resolve("v1").sha) == ("refs/tags/v1", v1)
    assert (source.resolve("next").ref, source.resolve("next").sha) == ("refs/heads/next", nxt)
    assert source.resolve(nxt).sha == nxt and source.resolve(nxt).ref == nxt
    assert source.resolve(nxt[:10]).sha == nxt
    assert source.read_file(v1, ".gitea/workflows/build.yaml") == "name: one\n"
    assert source.read_file(nxt, ".gitea/workflows/build.yaml") == "name: two\n"
    assert (source.mirror / "HEAD").is_file() and source.mirror.parent == tmp_path / "cache"


def test_a_ref_not_in_the_repository_names_the_ref_and_the_repository(repo: Path, tmp_path: Path) -> None:
    source = GitSource(tmp_path / "cache", str(repo))
    for ref in ("v9", "refs/tags/v9", "f" * 40):
        with pytest.raises(UnknownRef) as caught:
            source.resolve(ref)
        assert ref in caught.value.message and str(repo) in caught.value.message
    for hostile in ("--upload-pack=touch /tmp/x", "v1..v2", "a b", "v1@{0}", ""):
        with pytest.raises(UnknownRef, match="not a ref name"):
            source.resolve(hostile)


def test_a_moved_tag_and_a_new_commit_are_fetched_on_demand(repo: Path, tmp_path: Path) -> None:
    source = GitSource(tmp_path / "cache", str(repo))
    first = source.resolve("v1").sha
    (repo / "new.txt").write_text("new\n")
    _git(repo, "add", "new.txt")
    _git(repo, "commit", "--quiet", "-m", "three")
    _git(repo, "tag", "--force", "v1")
    moved = source.resolve("v1").sha
    assert moved != first and moved == _git(repo, "rev-parse", "HEAD")
    assert source.read_file(moved, "new.txt") == "new\n"


def test_a_missing_file_is_workflow_not_found(repo: Path, tmp_path: Path) -> None:
    source = GitSource(tmp_path / "cache", str(repo))
    sha = source.resolve("v1").sha
    with pytest.raises(WorkflowNotFound, match=r"no \.gitea/workflows/other\.yaml"):
        source.read_file(sha, ".gitea/workflows/other.yaml")
    with pytest.raises(WorkflowNotFound):
        source.read_file(sha, "../outside")


def test_concurrent_readers_share_one_mirror(repo: Path, tmp_path: Path) -> None:
    shas: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            shas.append(GitSource(tmp_path / "cache", str(repo)).resolve("v1").sha)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(shas)) == 1 and len(shas) == 6


def test_the_repository_check_refuses_what_git_cannot_read(repo: Path, tmp_path: Path) -> None:
    check_repository(str(repo))
    (tmp_path / "plain").mkdir()
    with pytest.raises(UnreadableRepository, match="not a readable git repository"):
        check_repository(str(tmp_path / "plain"))
    with pytest.raises(UnreadableRepository, match="not a readable git repository"):
        check_repository(str(tmp_path / "missing"))
    for url in ("ext::sh -c touch% /tmp/pwned", "-oProxyCommand=x", "relative/path", "fd::3", " /x"):
        with pytest.raises(UnreadableRepository):
            check_repository_url(url)
    for url in ("https://git.example/ops/images.git", "ssh://git@git.example/ops/images", "git@host:ops/x"):
        assert check_repository_url(url) == url
