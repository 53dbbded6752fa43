"""Benchmark: GiteaClient's calls against raw httpx calls of the same endpoints (goal: overhead < 20%).

One run, same machine, the same fake Gitea (tests/fake_gitea.py, a test double of Gitea 1.25's API)
served on 127.0.0.1 by uvicorn: for each action (get a run, list a run's jobs, a job's log, list runs
over two pages, get a runner), ``--calls`` calls through ``GiteaClient`` (typed models, error mapping,
retry bookkeeping, pagination) and the same number of plain ``httpx.Client`` requests with the same
headers, interleaved so both see the same server. Prints each action's median in ms and the ratio
client / raw, then the ratio of the summed medians (goal ≤ 1.20). It measures diskci's overhead on
top of the HTTP round trip, not Gitea's own latency.

Then the CI actions through the gitea backend: ``get_gitea_workflow_run`` (Gitea's run and its jobs,
mirrored into the database, answered from it) and ``get_gitea_job_logs`` (a page of the log), called
with ``invoke()`` on a platform configured for the same fake (SQLite database in a temporary directory),
against the direct REST calls the action needs (``GET`` run + jobs; ``GET`` the log), interleaved the
same way. Prints each action's medians and ratio, then the ratio of the summed medians (goal ≤ 1.20):
the cost of the backend (authorization, input validation, database read and mirror write, mapping).

Usage: ``python bench/gitea.py [--calls 300]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
from diskci.platform.actions.catalog import invoke  # noqa: E402
from diskci.platform.db.models import CiRun, Role  # noqa: E402
from diskci.platform.db.session import Database  # noqa: E402
from diskci.platform.gitea.client import GiteaClient  # noqa: E402
from diskci.platform.gitea.models import RunnerScope  # noqa: E402
from diskci.platform.settings import PlatformSettings  # noqa: E402
from fake_gitea import FakeGitea, served  # noqa: E402

OWNER, NAME = "ops", "images"


def seed(fake: FakeGitea) -> tuple[int, int, int]:
    """A repository with 80 runs (two pages of 50 at most), a run with two jobs and a log, a runner."""
    fake.add_repo(OWNER, NAME, workflows={"build.yaml": ["build amd64", "build arm64"]})
    run_id = 0
    for _ in range(80):
        run_id = fake.add_run(OWNER, NAME)
    job_id = fake.job_ids(run_id)[0]
    runner_id = fake.add_runner("worker", "repo", OWNER, NAME)
    fake.set_job(job_id, status="in_progress", runner_id=runner_id,
                 log="".join(f"row {i}: building\n" for i in range(2000)))  # fmt: skip
    return run_id, job_id, runner_id


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


Pair = tuple[str, Callable[[], object], Callable[[], object]]


def compare(pairs: Sequence[Pair], calls: int, left: str, right: str) -> float:
    """Each pair's medians over ``calls`` interleaved calls; the ratio of the summed medians."""
    total_left = total_right = 0.0
    for name, left_call, right_call in pairs:
        left_call(), right_call()  # warm-up
        left_t, right_t = [], []
        for _ in range(calls):
            left_t.append(timed(left_call))
            right_t.append(timed(right_call))
        a, b = statistics.median(left_t), statistics.median(right_t)
        total_left, total_right = total_left + a, total_right + b
        print(f"  {name:<22} {left} {a * 1000:6.2f} ms  {right} {b * 1000:6.2f} ms  ratio {a / b:.2f}")
    return total_left / total_right


def backend_actions(url: str, fake: FakeGitea, calls: int) -> float:
    """The CI actions through the gitea backend (``invoke()``) against the direct REST calls they need."""
    with tempfile.TemporaryDirectory(prefix="diskci-bench-gitea-") as tmp:
        settings = PlatformSettings(
            state_dir=Path(tmp) / "state",
            database_url=f"sqlite:///{tmp}/platform.db",
            queue_url=f"sqlite:///{tmp}/queue.db",
            secret_key="bench-gitea-secret-key-" + "b" * 32,
            public_base_url="http://127.0.0.1:8480",
        )
        database = Database(settings.database_url)
        database.upgrade()

        def call(action: str, **data: object) -> object:
            return invoke(action, data, database=database, settings=settings, actor="bench", role=Role.ADMIN)

        call("system_create_node_platform", name="bench", architectures=["amd64", "arm64"],
             registry_repository="127.0.0.1:5000/ops/disk-images/bench",
             cosign_identity_regexp=r"^https://ci\.example/ops/images/.+$",
             cosign_oidc_issuer="https://ci.example")  # fmt: skip
        call("system_configure_disk_image_ci", node_platform="bench", ci_backend="gitea", gitea_url=url,
             gitea_repository=f"{OWNER}/{NAME}", gitea_token=fake.token)  # fmt: skip
        run_id = call("bootstrap_disk_image_ci", node_platform="bench", ref="main").run_id  # type: ignore[attr-defined]
        with database.read_session() as session:
            run = session.get(CiRun, run_id)
            assert run is not None and run.gitea_run_id is not None
            gitea_run = run.gitea_run_id
        job = fake.job_ids(gitea_run)[0]
        fake.set_job(job, status="in_progress", log="".join(f"row {i}: building\n" for i in range(2000)))
        headers = {"Authorization": f"token {fake.token}", "Accept": "application/json"}
        runs = f"/repos/{OWNER}/{NAME}/actions/runs"
        with httpx.Client(base_url=url + "/api/v1", headers=headers) as raw:

            def raw_run() -> None:
                raw.get(f"{runs}/{gitea_run}").raise_for_status().json()
                raw.get(f"{runs}/{gitea_run}/jobs", params={"page": 1, "limit": 50}).raise_for_status().json()

            def raw_log() -> str:
                return raw.get(f"/repos/{OWNER}/{NAME}/actions/jobs/{job}/logs").raise_for_status().text

            def action_log() -> object:
                return call("get_gitea_job_logs", run_id=run_id, job_name="build amd64")

            pairs: list[Pair] = [
                ("get_gitea_workflow_run", lambda: call("get_gitea_workflow_run", run_id=run_id), raw_run),
                ("get_gitea_job_logs", action_log, raw_log),
            ]
            print(f"CI actions through the gitea backend against direct REST, {calls} calls each")
            ratio = compare(pairs, calls, "action", "rest")
        database.dispose()
    print(f"  all actions: ratio {ratio:.2f} (goal ≤ 1.20)")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="calls per action and side")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fake = FakeGitea(version="1.25.0")
    run_id, job_id, runner_id = seed(fake)
    scope = RunnerScope.repository(OWNER, NAME)
    headers = {"Authorization": f"token {fake.token}", "Accept": "application/json"}
    with served(fake) as url, GiteaClient(url, fake.token) as gitea, httpx.Client(
        base_url=url + "/api/v1", headers=headers
    ) as raw:  # fmt: skip
        runs = f"/repos/{OWNER}/{NAME}/actions/runs"
        first_page = {"page": 1, "limit": 50}

        def raw_runs() -> None:
            for page in (1, 2):
                raw.get(runs, params={"page": page, "limit": 50}).raise_for_status().json()

        actions: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            ("get run", lambda: gitea.get_run(OWNER, NAME, run_id),
             lambda: raw.get(f"{runs}/{run_id}").raise_for_status().json()),
            ("list jobs", lambda: gitea.list_jobs(OWNER, NAME, run_id),
             lambda: raw.get(f"{runs}/{run_id}/jobs", params=first_page).raise_for_status().json()),
            ("job log", lambda: gitea.job_logs(OWNER, NAME, job_id),
             lambda: raw.get(f"/repos/{OWNER}/{NAME}/actions/jobs/{job_id}/logs").raise_for_status().text),
            ("list 80 runs", lambda: gitea.list_runs(OWNER, NAME), raw_runs),
            ("get runner", lambda: gitea.get_runner(scope, runner_id),
             lambda: raw.get(f"/repos/{OWNER}/{NAME}/actions/runners/{runner_id}").raise_for_status().json()),
        ]  # fmt: skip
        gitea.version()  # asked once per client: not part of any action
        print(f"GiteaClient against raw httpx, {args.calls} calls each (fake Gitea 1.25 on 127.0.0.1)")
        ratio = compare(actions, args.calls, "client", "raw")
        print(f"  all calls: ratio {ratio:.2f} (goal ≤ 1.20)")
        backend_actions(url, fake, args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
