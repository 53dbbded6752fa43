"""Benchmark: GiteaClient's calls against raw httpx calls of the same endpoints (goal: overhead < 20%).

One run, same machine, the same fake Gitea (tests/fake_gitea.py, a test double of Gitea 1.25's API)
served on 127.0.0.1 by uvicorn: for each action (get a run, list a run's jobs, a job's log, list runs
over two pages, get a runner), ``--calls`` calls through ``GiteaClient`` (typed models, error mapping,
retry bookkeeping, pagination) and the same number of plain ``httpx.Client`` requests with the same
headers, interleaved so both see the same server. Prints each action's median in ms and the ratio
client / raw, then the ratio of the summed medians (goal ≤ 1.20). It measures diskci's overhead on
top of the HTTP round trip, not Gitea's own latency.

Usage: ``python bench/gitea.py [--calls 300]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
from diskci.platform.gitea.client import GiteaClient  # noqa: E402
from diskci.platform.gitea.models import RunnerScope  # noqa: E402
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
        total_client = total_raw = 0.0
        for name, client_call, raw_call in actions:
            client_call(), raw_call()  # warm-up
            client_t, raw_t = [], []
            for _ in range(args.calls):
                client_t.append(timed(client_call))
                raw_t.append(timed(raw_call))
            c, r = statistics.median(client_t), statistics.median(raw_t)
            total_client, total_raw = total_client + c, total_raw + r
            print(f"  {name:<13} client {c * 1000:6.2f} ms  raw {r * 1000:6.2f} ms  ratio {c / r:.2f}")
    ratio = total_client / total_raw
    print(f"  all actions: ratio {ratio:.2f} (goal ≤ 1.20)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
