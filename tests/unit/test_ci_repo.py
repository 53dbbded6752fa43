"""``diskci ci init-repo``: a real git repository with the spec and its workflow in one commit; refusals
leave nothing behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diskci.ci.repo import init_repo
from diskci.ci.workflow import WORKFLOW_PATH, render, workflow
from diskci.cli.main import app
from diskci.errors import SpecError, UsageError
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "platforms/debian-12-amd64.yaml"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_creates_a_repository_with_one_commit(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "images", SPEC)
    d = repo.directory
    assert _git(d, "rev-list", "--count", "HEAD").strip() == "1"
    assert _git(d, "rev-parse", "HEAD").strip() == repo.commit
    assert _git(d, "branch", "--show-current").strip() == "main"
    assert _git(d, "status", "--porcelain") == ""
    files = sorted(_git(d, "ls-files").split())
    assert files == [WORKFLOW_PATH, "platforms/debian-12-amd64.yaml"]
    assert (d / "platforms/debian-12-amd64.yaml").read_bytes() == SPEC.read_bytes()
    spec_path = "platforms/debian-12-amd64.yaml"
    assert (d / WORKFLOW_PATH).read_text() == render(workflow(load_spec(SPEC), spec_path), source=spec_path)
    # the workflow in the repository is current by `diskci ci workflow --check`
    check = CliRunner().invoke(
        app, ["ci", "workflow", str(d / spec_path), "--out", str(d / WORKFLOW_PATH), "--check"]
    )
    assert check.exit_code == 0, check.output


def test_an_existing_empty_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert init_repo(tmp_path / "images", SPEC).directory.joinpath(".git").is_dir()


def test_refuses_a_non_empty_directory_and_a_file(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty"):
        init_repo(busy, SPEC)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        init_repo(tmp_path / "file", SPEC)


def test_an_invalid_spec_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narchitectures: [sparc]\n")
    with pytest.raises(SpecError):
        init_repo(tmp_path / "images", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_failing_step_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diskci.ci.repo as repo_module

    def broken(*_args: object) -> str:
        raise UsageError("git broke")

    monkeypatch.setattr(repo_module, "_git", broken)
    with pytest.raises(UsageError, match="git broke"):
        init_repo(tmp_path / "images", SPEC)
    assert list(tmp_path.iterdir()) == []


def test_cli_json(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["ci", "init-repo", str(tmp_path / "images"), "--spec", str(SPEC), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["platform"] == "debian-12-amd64"
    assert info["workflow"] == WORKFLOW_PATH and info["branch"] == "main" and len(info["commit"]) == 40
