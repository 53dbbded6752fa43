"""Opt-in: GiteaClient against a real Gitea (``DISKCI_TEST_GITEA_URL``, ``DISKCI_TEST_GITEA_TOKEN``;
``DISKCI_TEST_GITEA_REPO`` as ``owner/name`` for the repository calls). Skipped when unset. Read-only
but for the registration token, which Gitea hands out again unchanged."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from diskci.platform.gitea.client import GiteaClient, GiteaUnsupported
from diskci.platform.gitea.models import RunnerScope

URL = os.environ.get("DISKCI_TEST_GITEA_URL", "")
TOKEN = os.environ.get("DISKCI_TEST_GITEA_TOKEN", "")
REPO = os.environ.get("DISKCI_TEST_GITEA_REPO", "")

pytestmark = pytest.mark.skipif(
    not (URL and TOKEN), reason="set DISKCI_TEST_GITEA_URL and DISKCI_TEST_GITEA_TOKEN to test a real Gitea"
)


@pytest.fixture
def gitea() -> Iterator[GiteaClient]:
    with GiteaClient(URL, TOKEN) as client:
        yield client


@pytest.fixture
def repo() -> tuple[str, str]:
    if "/" not in REPO:
        pytest.skip("set DISKCI_TEST_GITEA_REPO=owner/name for the repository calls")
    owner, name = REPO.split("/", 1)
    return owner, name


def test_version_and_cancel_detection(gitea: GiteaClient) -> None:
    version = gitea.version()
    assert version.major >= 1
    assert gitea.cancel_supported() in (True, False, None)


def test_repository_calls(gitea: GiteaClient, repo: tuple[str, str]) -> None:
    owner, name = repo
    scope = RunnerScope.repository(owner, name)
    token = gitea.registration_token(scope)
    assert token and gitea.registration_token(scope) == token
    if gitea.version().at_least(1, 24):
        for runner in gitea.list_runners(scope):
            assert gitea.get_runner(scope, runner.id).name == runner.name
    try:
        runs = gitea.list_runs(owner, name, max_runs=3)
    except GiteaUnsupported:
        return  # before 1.25
    for run in runs:
        assert gitea.get_run(owner, name, run.id).id == run.id
        for job in gitea.list_jobs(owner, name, run.id):
            assert job.run_id == run.id
