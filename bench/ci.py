"""Benchmark: the platform's CI path against the same work by hand, its dispatch latency, its log rate.

One run, same machine:

1. **Tag push → published publication** through the platform with a local CI worker (the runbook
   demo's steps: ``git push origin vX``, the run's build and publish jobs under act, the platform's
   verification), against the same ``diskci build`` + ``diskci publish`` run by hand on the same warm
   build cache (``--cache``, default /var/cache/diskci; a first, untimed build by hand warms it). The
   ratio CI / by hand is printed (goal ≤ 1.10). Needs root (mmdebstrap).

   What is compared (the issue: "tag push to published publication against the same build and
   publish run by hand"): both sides start from the same state (a warm build cache, a served platform
   with the NodePlatform and its webhook, its queue consumer idle) and end at the same point, **the
   publication ``published`` as the platform recorded it** (its ``disk_image_published`` event). By
   hand that is ``diskci build`` + ``diskci publish --notify-url`` (sign, push, webhook) to a platform
   configured for the by-hand signer, then the platform's verification of it; through CI it is the
   tag push, the run's jobs, and the same verification. The verification is the same work on both
   sides and ends the issue's "published publication", so it is in both; the ratio up to the
   webhook's arrival (the platform's ``received_at``, verification left out on both sides) is printed
   beside it, and the seconds CI adds are the same in both. Every time comes from a wall clock read
   before the first command and from the platform's database (never from when a poll noticed): the
   CI side starts as ``git push`` begins and its timeline (run, jobs, steps, the webhook, the queue
   task, the publication) is printed from the platform's records. Each side starts after a ``sync``
   in a directory of its own, which is removed before the other side runs, and the order alternates
   between runs (``--repeat``): the side run second must not pay for writing back the first one's
   gigabytes. This machine is shared and busy: a single run's ratio swings; take the median.
2. **queued → in_progress** with 200 queued one-step jobs and 4 local workers (``diskci runner``
   processes): for each job, the time from the moment a worker could take it (it was queued and a
   worker was free: idle, or done with its previous job) until a worker had it — p50 and p99 (goal p99
   < 1 s). The jobs' raw time in the queue (which 200 jobs on 4 workers make long) is printed beside.
3. **Log rows streamed per second**: one job printing ``--log-rows`` rows, from its start to the
   moment the platform holds its whole log.

Usage: ``python bench/ci.py [--skip-build | --tag-push-only] [--repeat N] [--jobs 200] [--workers 4]
[--log-rows 50000]`` (``--skip-build`` runs 2 and 3 only: no root, no cache needed; ``--tag-push-only``
runs 1 only, ``--repeat`` times).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import select

from diskci.demo import DemoConfig, PlatformServer, free_port
from diskci.demo_runbook import DEMO_SOURCE_DATE_EPOCH, run_runbook_demo
from diskci.platform.ci import runners, scheduler
from diskci.platform.db.models import (
    CiJob,
    CiRun,
    CiRunner,
    DiskImagePublication,
    Event,
    NodePlatform,
    Task,
    WebhookDelivery,
)
from diskci.platform.db.session import Database
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "platforms/debian-12-amd64.yaml"
IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v1"
ISSUER = "https://git.example.com"
PUBLISHED_TIMEOUT = 900.0


def diskci(*args: str | Path, cwd: Path | None = None) -> float:
    """Run ``diskci ARGS`` (output kept quiet unless it fails); its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diskci", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(
            f"diskci {' '.join(map(str, args))} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return time.perf_counter() - start


# --- 1. tag push → published, against build + publish by hand -------------------------------------------


def utc(value: datetime) -> datetime:
    """A time the database gave back (SQLite drops the zone: it is UTC), zone-aware."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass
class Timeline:
    """One side's marks, in seconds since its start, from the platform's records; ``total`` is the
    publication's ``published`` time, ``webhook`` the webhook's arrival."""

    name: str
    marks: list[tuple[float, str]] = field(default_factory=list)
    total: float = 0.0
    webhook: float = 0.0

    def add(self, start: datetime, when: datetime | None, what: str) -> None:
        if when is not None:
            self.marks.append(((utc(when) - start).total_seconds(), what))

    def print(self) -> None:
        print(
            f"  {self.name}: published after {self.total:.1f} s (webhook received after {self.webhook:.1f} s)"
        )
        previous = 0.0
        for at, what in sorted(self.marks, key=lambda m: m[0]):
            print(f"    +{at:6.1f} s  (+{at - previous:5.1f})  {what}")
            previous = max(previous, at)


def publication_marks(db: Database, digest: str, start: datetime, line: Timeline) -> None:
    """The webhook, the queue task and the ``published`` event of the publication of ``digest``."""
    with db.read_session() as s:
        pub = s.scalar(select(DiskImagePublication).where(DiskImagePublication.manifest_digest == digest))
        if pub is None or pub.status != "published":
            raise SystemExit(f"publication {digest} is {pub.status if pub else 'missing'}, not published")
        delivery = s.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == pub.delivery_id))
        task = s.scalar(select(Task).where(Task.task_id == delivery.task_id)) if delivery else None
        subject = f"{pub.platform.name}:{pub.version}"
        event = s.scalar(select(Event).where(Event.type == "disk_image_published", Event.subject == subject))
        published = utc(event.created_at if event is not None else pub.updated_at)
        if delivery is not None:
            line.add(start, delivery.received_at, "webhook received (HTTP 202)")
            line.webhook = (utc(delivery.received_at) - start).total_seconds()
        if task is not None:
            line.add(start, task.started_at, "queue consumer took the verification task")
        line.add(start, published, "publication published (verified)")
        line.total = (published - start).total_seconds()


def wait_published(db: Database, digest: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read_session() as s:
            pub = s.scalar(select(DiskImagePublication).where(DiskImagePublication.manifest_digest == digest))
            if pub is not None and pub.status in ("published", "failed"):
                return
        time.sleep(0.2)
    raise SystemExit(f"publication {digest} was not verified within {timeout:g} s")


def warm_up(tmp: Path, cache: Path) -> None:
    """One untimed ``diskci build`` of the spec: the cache holds every stage from here on."""
    epoch = str(DEMO_SOURCE_DATE_EPOCH)
    seconds = diskci("build", SPEC, "--out", tmp / "warm-up", "--cache", cache, "--source-date-epoch", epoch)
    shutil.rmtree(tmp / "warm-up", ignore_errors=True)
    print(f"  warm-up build (untimed): {seconds:.1f} s")


def by_hand(tmp: Path, cache: Path) -> Timeline:
    """``diskci build`` + ``diskci publish`` of the spec to a served platform (the CI run's work), from
    the build's start to the publication ``published``."""
    spec = load_spec(SPEC)
    authority = tmp / "hand-authority"
    diskci("authority", "init", authority, "--issuer", ISSUER)
    registry = tmp / "hand-registry"
    repository = f"oci-layout:{registry}/{spec.registry_repository}"
    server = PlatformServer(tmp / "hand-platform", free_port())
    with server:
        server.action("system_create_node_platform", {
            "name": spec.name, "architectures": [a.value for a in spec.architectures],
            "registry_repository": repository,
            "cosign_identity_regexp": "^" + re.escape(IDENTITY) + "$", "cosign_oidc_issuer": ISSUER,
            "trusted_root": (authority / "trusted_root.json").read_text(),
        })  # fmt: skip
        secret = tmp / "hand-webhook.secret"
        secret.write_text(server.action("provision_disk_image_webhook", {"platform": spec.name})["secret"])
        out = tmp / "hand-build"
        epoch = str(DEMO_SOURCE_DATE_EPOCH)  # the demo repository's commit time: the CI build's epoch
        start = datetime.now(UTC)
        build_t = diskci("build", SPEC, "--out", out, "--cache", cache, "--source-date-epoch", epoch)
        publish_t = diskci(
            "publish", out, "--to", f"{repository}:{spec.version}", "--identity", IDENTITY,
            "--authority", authority, "--issuer", ISSUER,
            "--notify-url", f"{server.base_url}/api/v1/system/webhooks/disk_image_built",
            "--secret-file", secret,
        )  # fmt: skip
        db = Database(f"sqlite:///{server.state_dir / 'platform.db'}")
        try:
            with db.read_session() as s:
                digest = s.scalars(select(WebhookDelivery)).one().payload["manifest_digest"]
            wait_published(db, digest, PUBLISHED_TIMEOUT)
            line = Timeline("by hand")
            line.marks.append((build_t, "diskci build done"))
            line.marks.append((build_t + publish_t, "diskci publish done (signed, pushed, notified)"))
            publication_marks(db, digest, start, line)
        finally:
            db.dispose()
    return line


def through_the_platform(tmp: Path, cache: Path) -> Timeline:
    """The runbook demo's tag push, run and verification, from ``git push`` to ``published``."""
    cfg = DemoConfig(spec_path=SPEC, state_dir=tmp / "demo", cache_dir=cache, boot=False)
    result = run_runbook_demo(cfg)
    if result.conclusion != "success":
        raise SystemExit(f"the CI run ended {result.conclusion}")
    assert result.push_started_at is not None
    start = result.push_started_at
    line = Timeline("through the platform")
    db = Database(f"sqlite:///{cfg.state_dir / 'platform' / 'platform.db'}")
    try:
        with db.read_session() as s:
            run = s.get(CiRun, result.run_id)
            assert run is not None
            line.add(start, run.created_at, "run queued (git push, its hook, the platform's run)")
            for job in sorted(run.jobs, key=lambda j: j.started_at or j.created_at):
                line.add(
                    start, job.started_at, f"job {job.name} taken by {job.runner.name if job.runner else '?'}"
                )
                for step in job.steps:
                    for key, what in (("started_at", "started"), ("completed_at", "done")):
                        if step.get(key):
                            line.add(
                                start, datetime.fromisoformat(step[key]), f"  step {step['name']} {what}"
                            )
                line.add(start, job.completed_at, f"job {job.name} {job.conclusion}")
        publication_marks(db, result.manifest_digest, start, line)
    finally:
        db.dispose()
    return line


def bench_tag_push(cache: Path, repeat: int = 1) -> None:
    print("1. tag push → published publication (warm cache)")
    ratios: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ci-", dir="/var/tmp") as tmpdir:
        warm_up(Path(tmpdir), cache)
    for attempt in range(repeat):
        # the side that runs second would otherwise start with the first one's gigabytes still
        # being written back (its build, registry and blob cache): each side runs in a directory of
        # its own, removed before the other starts, after a sync; the order alternates between runs
        sides: dict[str, Callable[[Path, Path], Timeline]] = {"hand": by_hand, "ci": through_the_platform}
        order = list(sides) if attempt % 2 == 0 else list(reversed(sides))
        timelines: dict[str, Timeline] = {}
        for side in order:
            with tempfile.TemporaryDirectory(prefix=f"bench-ci-{side}-", dir="/var/tmp") as tmpdir:
                os.sync()
                timelines[side] = sides[side](Path(tmpdir), cache)
        hand, ci = timelines["hand"], timelines["ci"]
        print(f"  run {attempt + 1} ({' first, then '.join(order)}):")
        hand.print()
        ci.print()
        ratio, to_webhook = ci.total / hand.total, ci.webhook / hand.webhook
        ratios.append((ratio, to_webhook))
        print(
            f"  run {attempt + 1}: by hand {hand.total:.1f} s, through the platform {ci.total:.1f} s "
            f"(+{ci.total - hand.total:.1f} s): ratio {ratio:.2f} (goal ≤ 1.10); up to the webhook "
            f"{hand.webhook:.1f} s vs {ci.webhook:.1f} s (+{ci.webhook - hand.webhook:.1f} s): "
            f"{to_webhook:.2f}"
        )
    if repeat > 1:
        print(
            f"  median of {repeat}: ratio {statistics.median(r for r, _ in ratios):.2f}, "
            f"up to the webhook {statistics.median(w for _, w in ratios):.2f}"
        )


# --- 2 and 3. dispatch latency and log rate on a served platform -------------------------------------------


def git_repo(path: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@localhost",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@localhost"}  # fmt: skip
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "README").write_text("bench\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "bench"], check=True, env=env)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, env=env,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def many_jobs(count: int) -> str:
    job = {
        "name": "job ${{ matrix.n }}",
        "runs-on": "amd64",
        "strategy": {"matrix": {"n": list(range(count))}},
        "steps": [{"name": "Nothing", "run": "true"}],
    }
    return yaml.safe_dump({"on": "push", "jobs": {"one": job}}, sort_keys=False)


def log_flood(rows: int) -> str:
    job = {"runs-on": "amd64", "steps": [{"name": "Print", "run": f"seq 1 {rows}"}]}
    return yaml.safe_dump({"on": "push", "jobs": {"flood": job}}, sort_keys=False)


@contextlib.contextmanager
def served(tmp: Path, workers: int) -> Iterator[tuple[Database, int, str]]:
    """A served platform's database, a NodePlatform with a git repository (its id and the commit), and
    ``workers`` runners polling the platform."""
    port = free_port()
    server = PlatformServer(
        tmp / "platform", port, extra_env={"DISKCI_CI_BASE_URL": f"http://127.0.0.1:{port}"}
    )
    with server, contextlib.ExitStack() as stack:
        db = Database(f"sqlite:///{tmp / 'platform' / 'platform.db'}")
        stack.callback(db.dispose)
        repo = tmp / "repo"
        sha = git_repo(repo)
        with db.session() as s:
            platform = NodePlatform(
                name="bench",
                architectures=["amd64"],
                registry_repository="127.0.0.1:1/bench",
                cosign_identity_regexp=".*",
                cosign_oidc_issuer="https://ci.example",
                image_build_repository=str(repo),
            )
            s.add(platform)
            s.flush()
            platform_id = platform.id
        for i in range(workers):
            state_dir = tmp / f"runner-{i}"
            with db.session() as s:
                token = runners.new_registration_token(s)
            diskci("runner", "register", "--url", server.base_url, "--name", f"bench-{i}",
                   "--labels", "amd64", "--state-dir", state_dir, "--token", token)  # fmt: skip
            log = stack.enter_context((tmp / f"runner-{i}.log").open("w"))
            argv = [sys.executable, "-m", "diskci", "runner", "run", "--state-dir", str(state_dir)]
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(stop, proc)
        wait_for(lambda: online(db) >= workers, 60, f"{workers} runners online")
        time.sleep(1.5)  # every runner idle and polling, as a fleet waiting for work is
        yield db, platform_id, sha


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def online(db: Database) -> int:
    with db.read_session() as s:
        return sum(1 for r in s.query(CiRunner).all() if r.last_seen is not None)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def new_run(db: Database, platform_id: int, text: str, sha: str) -> int:
    with db.session() as s:
        platform = s.get(NodePlatform, platform_id)
        assert platform is not None
        return scheduler.create_run(s, platform, text, ref="refs/heads/main", sha=sha).id


def completed(db: Database, run_id: int) -> bool:
    with db.read_session() as s:
        run = s.get(CiRun, run_id)
        return run is not None and run.status == "completed"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench_dispatch(db: Database, platform_id: int, sha: str, count: int, workers: int) -> None:
    print(f"2. queued → in_progress: {count} one-step jobs, {workers} local workers")
    started = time.perf_counter()
    run_id = new_run(db, platform_id, many_jobs(count), sha)
    wait_for(lambda: completed(db, run_id), 60 + count * 5, f"run {run_id} to complete")
    elapsed = time.perf_counter() - started
    with db.read_session() as s:
        jobs = s.query(CiJob).filter(CiJob.run_id == run_id).all()
        rows = [(j.created_at, j.started_at, j.completed_at, j.runner_id, j.conclusion) for j in jobs]
    failed = [r for r in rows if r[4] != "success"]
    if failed:
        raise SystemExit(f"{len(failed)} of the {count} jobs did not succeed")
    free_since: dict[int | None, datetime] = {}
    dispatch: list[float] = []
    queued: list[float] = []
    timed_rows = [(c, st, e, r) for c, st, e, r, _ in rows if st is not None and e is not None]
    for created, start, end, runner_id in sorted(timed_rows, key=lambda r: r[1]):
        could = max(created, free_since.get(runner_id, created))
        dispatch.append((start - could).total_seconds())
        queued.append((start - created).total_seconds())
        free_since[runner_id] = end
    print(f"  dispatch (a worker free → it has the job): p50 {statistics.median(dispatch) * 1000:.0f} ms, "
          f"p99 {percentile(dispatch, 0.99) * 1000:.0f} ms (goal p99 < 1000 ms)")  # fmt: skip
    print(f"  time in the queue (200 jobs wait for 4 workers): p50 {statistics.median(queued):.1f} s, "
          f"p99 {percentile(queued, 0.99):.1f} s; {count / elapsed:.1f} jobs/s over the run")  # fmt: skip


def bench_log_rate(db: Database, platform_id: int, sha: str, rows: int) -> None:
    print(f"3. log rows streamed: one job printing {rows} rows")
    run_id = new_run(db, platform_id, log_flood(rows), sha)

    def job() -> CiJob | None:
        with db.read_session() as s:
            found = s.query(CiJob).filter(CiJob.run_id == run_id).one_or_none()
            if found is not None:
                s.expunge(found)
            return found

    wait_for(lambda: (j := job()) is not None and j.status != "queued", 60, "the flood job to start")
    start = time.perf_counter()
    wait_for(lambda: (j := job()) is not None and j.log_complete, 600, "the flood job's whole log")
    elapsed = time.perf_counter() - start
    final = job()
    assert final is not None
    print(f"  {final.log_length} rows in {elapsed:.1f} s: {final.log_length / elapsed:,.0f} rows/s "
          f"(job {final.conclusion})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-build", action="store_true", help="only the dispatch and log benchmarks")
    parser.add_argument("--tag-push-only", action="store_true", help="only the tag push benchmark")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the tag push benchmark")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("DISKCI_CACHE", "/var/cache/diskci"))
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--log-rows", type=int, default=50_000)
    args = parser.parse_args()
    if not args.skip_build:
        if os.geteuid() != 0:
            print("1. skipped: diskci build needs root (mmdebstrap); run as root or pass --skip-build")
        else:
            bench_tag_push(args.cache, args.repeat)
    if args.tag_push_only:
        return 0
    if shutil.which("git") is None:
        print("git is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-ci-serve-", dir="/var/tmp") as tmpdir:
        tmp = Path(tmpdir)
        with served(tmp, args.workers) as (db, platform_id, sha):
            bench_dispatch(db, platform_id, sha, args.jobs, args.workers)
            bench_log_rate(db, platform_id, sha, args.log_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
